"""One run per workdir, through the real command line (zsl_jax.workdir, zsl_jax.checkpoint.check_compatible).

A changed config is refused with nothing changed; a second run on a busy workdir is refused at once
naming the holder; a killed run's lock is taken over and an allowed change (total_steps) continues
the run; a checkpoint of another shape or method (toy, DAZLE, HGR-Net, VSMR) is refused before anything is restored.
"""
import hashlib
import json
import signal
import socket
import time

import pytest

from tests import cli
from zsl_jax import checkpoint as ckpt_lib

CONFIG = "tests/toy_config.py"


def hashes(workdir):
  """{relative path: sha256} of every file under `workdir`."""
  return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


def error_line(proc, code):
  """The last stderr line of a run that must end with `code` and no traceback."""
  assert proc.returncode == code, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return proc.stderr.strip().splitlines()[-1]


def train_steps(workdir):
  """The steps of every `train` line of metrics.jsonl, in file order (duplicates kept)."""
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r["step"] for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("guard") / "run"
  cli.run_main(CONFIG, workdir)
  return workdir


def test_changed_config_is_refused_and_nothing_changes(trained):
  before = hashes(trained)
  proc = cli.run_main(CONFIG, trained, "--config.optim.lr=0.1", "--config.toy.hidden=64",
                      "--config.total_steps=16", check=False)
  line = error_line(proc, 2)
  differing = line.split("changes allowed")[0]
  assert "optim.lr 0.03 -> 0.1" in differing and "toy.hidden 32 -> 64" in differing, line
  assert "total_steps" not in differing  # an allowed change is not what blocks the run
  assert "new --workdir" in line and f"--config.init.checkpoint={trained}" in line
  assert hashes(trained) == before


def _wait_for(condition, proc, what, timeout=180):
  start = time.time()
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-3000:]}")
    if time.time() - start > timeout:
      raise AssertionError(f"no {what} after {timeout} s")
    time.sleep(0.05)


def test_busy_workdir_refused_then_killed_runs_lock_taken_over(tmp_path):
  workdir = tmp_path / "run"
  args = ("tests/toy_config.py:steps=1000", workdir, "--config.toy.sleep_per_batch=0.3")
  first = cli.popen_main(*args)
  _wait_for(lambda: (workdir / "checkpoints" / "4" / "state").is_dir(), first, "checkpoint 4")
  second = cli.run_main(*args, check=False)
  line = error_line(second, 2)
  assert f"host {socket.gethostname()}, pid {first.pid}" in line and "in use by another run" in line, line
  first.send_signal(signal.SIGKILL)  # dies holding the lock: its .lock file still names it
  first.wait()
  steps = train_steps(workdir)
  assert steps == list(range(1, len(steps) + 1))  # one writer only: no duplicated rows
  assert json.loads((workdir / ".lock").read_text())["pid"] == first.pid

  resume_at = ckpt_lib.complete_steps(workdir / "checkpoints")[-1]
  end = resume_at + 3
  before = len(steps)  # the killed run may have trained past `end` (it kept going while its save ran)
  proc = cli.run_main(*args, f"--config.total_steps={end}")  # an allowed change: the run goes on
  assert "taking over" in proc.stderr and f"at step {resume_at}" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert (workdir / ".lock").read_text() == ""  # released
  assert json.loads((workdir / "config.json").read_text())["total_steps"] == end
  assert json.loads((workdir / "config.1.json").read_text())["total_steps"] == 1000
  assert train_steps(workdir)[before:] == list(range(resume_at + 1, end + 1))  # the taken-over run's rows
  assert ckpt_lib.complete_steps(workdir / "checkpoints")[-1] == end


def test_checkpoint_of_another_shape_or_method_is_refused_before_restoring(trained, tmp_path):
  proc = cli.run_main(CONFIG, tmp_path / "wider", "--config.mode=eval", f"--config.init.checkpoint={trained}",
                      "--config.toy.hidden=64", check=False)
  line = error_line(proc, 2)
  assert "['params']['BatchNorm_0']['bias'] is stored with shape (32,), this model expects (64,)" in line, line
  assert "(5 more entries differ)" in line  # 4 parameters and 2 batch statistics are wider
  proc = cli.run_main("configs/dazle_awa2.py:demo", tmp_path / "dazle", "--config.mode=eval",
                      f"--config.data.demo_dir={tmp_path / 'data'}", f"--config.init.checkpoint={trained}",
                      check=False)
  line = error_line(proc, 2)
  assert "does not fit this model: it lacks ['params']['V']" in line and "trainer 'tests.toy_trainer'" in line, line
  assert not (tmp_path / "dazle" / "metrics.jsonl").exists()


def test_dazle_run_given_to_hgr_net_or_to_vsmr_with_other_attributes_is_refused(tmp_path):
  dazle, data = tmp_path / "dazle", tmp_path / "data"
  cli.run_main("configs/dazle_awa2.py:demo", dazle, f"--config.data.demo_dir={data}", "--config.total_steps=2")
  proc = cli.run_main("configs/hgr_rn50.py:demo", tmp_path / "hgr", "--config.mode=eval",
                      f"--config.init.checkpoint={dazle}", check=False)
  line = error_line(proc, 2)
  assert "lacks ['params']['clip']" in line and "written by trainer 'dazle'" in line, line
  proc = cli.run_main("configs/vsmr_awa2.py:demo", tmp_path / "vsmr", "--config.mode=eval",  # 12 attributes, not 24
                      f"--config.data.demo_dir={tmp_path / 'vsmr_data'}", f"--config.init.checkpoint={dazle}",
                      check=False)
  line = error_line(proc, 2)
  assert "does not fit this model" in line and "written by trainer 'dazle'" in line, line
  assert not (tmp_path / "hgr" / "metrics.jsonl").exists() and not (tmp_path / "vsmr" / "metrics.jsonl").exists()
