"""Exact resume after SIGKILL, SIGTERM preemption, and restoring checkpoints onto other meshes."""
import json
import signal
import time

import jax
import numpy as np
import pytest

from tests import cli
from tests import toy_config
from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import engine
from zsl_jax import metrics
from zsl_jax import sharding

CONFIG = "tests/toy_config.py:steps=16"
# Same command for every run: fsdp sharding so checkpoints hold genuinely split arrays, and a
# small per-batch delay so a kill can land between two checkpoints.
OVERRIDES = ("--config.sharding.strategy=fsdp", "--config.sharding.min_fsdp_size=64",
             "--config.mesh.fsdp=2", "--config.toy.sleep_per_batch=0.2")


def _wait_for_checkpoint(workdir, step, proc, timeout=120):
  start = time.time()
  while not (workdir / "checkpoints" / str(step) / "state").is_dir():
    if proc.poll() is not None:
      raise AssertionError(f"run ended before checkpoint {step}: {proc.stderr.read()[-3000:]}")
    if time.time() - start > timeout:
      raise AssertionError(f"no checkpoint {step} after {timeout} s")
    time.sleep(0.02)


def _final_state(workdir):
  return cli.restore_state(toy_config.get_config("steps=16"), workdir)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  cli.run_main(CONFIG, workdir, *OVERRIDES)
  return workdir


def _train_records(workdir):
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in records if r["split"] == "train"]


def test_sigkill_then_same_command_resumes_exactly(tmp_path, uninterrupted):
  proc = cli.popen_main(CONFIG, tmp_path, *OVERRIDES)
  _wait_for_checkpoint(tmp_path, 4, proc)
  time.sleep(0.5)  # Let it train past the checkpoint, so resuming must redo steps.
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(r["step"] for r in _train_records(tmp_path))
  assert 4 <= killed_at < 16, killed_at
  assert not (tmp_path / "checkpoints" / "16").exists()
  cli.run_main(CONFIG, tmp_path, *OVERRIDES)

  full, full_step = _final_state(uninterrupted)
  resumed, resumed_step = _final_state(tmp_path)
  assert full_step == resumed_step == 16
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  # The data stream: every step saw the same examples as in the uninterrupted run (no batch
  # skipped or repeated), including the steps redone after the restart.
  reference = {r["step"]: r["index_sum"] for r in _train_records(uninterrupted)}
  assert sorted(reference) == list(range(1, 17))
  for r in _train_records(tmp_path):
    assert r["index_sum"] == reference[r["step"]], r["step"]
  # Final evaluation ran once the run completed.
  heldout = metrics.read_metrics(tmp_path, split="heldout")
  assert [r["step"] for r in heldout] == [16]


def test_sigterm_saves_then_exits_and_resume_completes(tmp_path, uninterrupted):
  proc = cli.popen_main(CONFIG, tmp_path, *OVERRIDES)
  _wait_for_checkpoint(tmp_path, 4, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  stopped_at = max(r["step"] for r in _train_records(tmp_path))
  assert saved[-1] == stopped_at and stopped_at < 16  # A checkpoint at the exact step it stopped.
  assert "re-run the same command" in err
  cli.run_main(CONFIG, tmp_path, *OVERRIDES)
  full, _ = _final_state(uninterrupted)
  resumed, _ = _final_state(tmp_path)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mesh_shape", [(1, 1), (2, 4)])
def test_checkpoint_from_8_devices_restores_on_other_meshes(uninterrupted, mesh_shape):
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape)), devices)
  config = toy_config.get_config("steps=16")
  config.sharding.strategy = "fsdp"
  config.sharding.min_fsdp_size = 64
  eng = engine.Engine(config, uninterrupted, mesh=mesh)
  eng.build_state(with_optimizer=True)
  ck = ckpt_lib.Checkpointer(uninterrupted / "checkpoints")
  state, step = ck.restore(eng.abstract_state, step=16)
  ck.close()
  kernel = state["params"]["Dense_0"]["kernel"]
  assert kernel.sharding == eng.state_shardings["params"]["Dense_0"]["kernel"]
  assert len(kernel.sharding.device_set) == len(devices)
  reference, _ = _final_state(uninterrupted)
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(a, b)
