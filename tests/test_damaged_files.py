"""Damaged files, as a kill or a full disk leaves them, through the real command line.

A torn last line of metrics.jsonl and an unreadable newest checkpoint are recovered from: the
checkpoint is moved aside with a warning, the run resumes from the previous one and ends exactly
where an undamaged run ends. A full disk during a save (injected by `tests.faults` inside Orbax's
writer) ends with one line naming the path and the space needed; the last complete checkpoint
stays intact and the same command then finishes the run exactly.
"""
import json
import re
import shutil
import sys

import jax
import numpy as np
import pytest

from tests import cli
from tests import toy_config
from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import metrics
from zsl_jax.errors import UserError

CONFIG = "tests/toy_config.py"
KEEP_ALL = "--config.checkpoint.keep=0"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An undamaged 12-step run (checkpoints 4, 8, 12) and its final state."""
  workdir = tmp_path_factory.mktemp("damaged") / "reference"
  cli.run_main(CONFIG, workdir, KEEP_ALL)
  state, step = cli.restore_state(toy_config.get_config(), workdir)
  assert step == 12
  return workdir, state


def _assert_final_state_is(workdir, want):
  got, step = cli.restore_state(toy_config.get_config(), workdir)
  assert step == 12
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_torn_metrics_line_and_unreadable_checkpoint_resume_exactly(reference, tmp_path):
  source, final = reference
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  with open(workdir / "metrics.jsonl", "ab") as f:
    f.write(b'{"step": 13, "split": "tr')  # torn by a kill
  for chunk in (workdir / "checkpoints" / "12" / "state" / "d").iterdir():
    chunk.write_bytes(chunk.read_bytes()[:len(chunk.read_bytes()) // 2])  # array data cut short

  proc = cli.run_main(CONFIG, workdir, KEEP_ALL)
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert f"checkpoint {workdir / 'checkpoints' / '12'} is unreadable" in proc.stderr
  assert "moved it to 12.unreadable and resuming from step 8 instead" in proc.stderr
  assert "removing a torn last line (25 bytes)" in proc.stderr
  assert (workdir / "checkpoints" / "12.unreadable" / "state").is_dir()  # kept for inspection
  assert ckpt_lib.complete_steps(workdir / "checkpoints") == [4, 8, 12]
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  train = [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]
  assert train == list(range(1, 13)) + [9, 10, 11, 12]  # steps 9-12 trained again, nothing torn left
  _assert_final_state_is(workdir, final)


def test_full_disk_during_a_save_ends_with_one_line_and_the_rerun_finishes(reference, tmp_path):
  _, final = reference
  args = cli.main_args(CONFIG, tmp_path, KEEP_ALL)[3:]  # after `python -m zsl_jax.main`
  proc = cli.run([sys.executable, "-m", "tests.faults", "enospc_at=8", *args], env=cli.env())
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert f"no space left on the device of {tmp_path / 'checkpoints'} while writing a checkpoint" in line, line
  assert re.search(r"needs about [0-9.]+ KiB, [0-9.]+ \w+ free", line), line
  assert "the last complete checkpoint, step 4, is intact" in line
  assert ckpt_lib.complete_steps(tmp_path / "checkpoints") == [4]

  proc = cli.run_main(CONFIG, tmp_path, KEEP_ALL)
  assert "at step 4" in proc.stderr and "Traceback" not in proc.stderr
  _assert_final_state_is(tmp_path, final)


def test_metrics_readers_and_writer_handle_damage(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "split": "train", "loss": 1.0}')  # a complete record whose newline was cut
  writer = metrics.MetricWriter(tmp_path, tensorboard=False, enabled=True)
  writer.write(2, "train", {"loss": 0.5})
  writer.close()
  assert [r["step"] for r in metrics.read_metrics(tmp_path)] == [1, 2]
  path.write_text('{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 3, "split": "train"}\n')
  with pytest.raises(UserError, match="metrics.jsonl line 2 is not a JSON record"):
    metrics.read_metrics(tmp_path)
