"""The engine's throughput accounting: step time, examples/s, data wait, compile time, FLOPs and MFU."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import cli
from zsl_jax import chrono
from zsl_jax import metrics
from zsl_jax import sharding

CONFIG = "tests/toy_config.py:steps=12"
BATCH = 32  # tests/toy_config.py's batch_size


def _train_records(workdir):
  return metrics.read_metrics(workdir, split="train")


def test_train_records_carry_sane_accounting(tmp_path):
  # Log every 3 steps while checkpoints land every 4: intervals cut by lagged and by forced reads.
  cli.run_main(CONFIG, tmp_path, "--config.log.every_steps=3")
  records = _train_records(tmp_path)
  assert [r["step"] for r in records] == [3, 6, 9, 12]
  for r in records:
    assert r["step_time"] > 0, r
    assert 0.0 <= r["data_wait_fraction"] <= 1.0, r
    assert r["examples_per_sec"] * r["step_time"] == pytest.approx(BATCH, rel=0.01), r
    assert r["flops"] > 0 and r["flops_per_sec"] > 0, r
    assert r["flops_per_sec"] == pytest.approx(r["flops"] / r["step_time"], rel=1e-6)
    assert "mfu" not in r  # CPU: no peak to compare with.
  with_compile = [r for r in records if "compile_time" in r]
  assert [r["step"] for r in with_compile] == [3]
  assert with_compile[0]["compile_time"] > 0


def test_slow_iterator_shows_as_data_wait(tmp_path):
  cli.run_main("tests/toy_config.py:steps=10", tmp_path, "--config.log.every_steps=2",
               "--config.toy.sleep_per_batch=0.25", "--config.checkpoint.every_steps=100")
  records = _train_records(tmp_path)
  assert [r["step"] for r in records] == [2, 4, 6, 8, 10]
  # The engine's device-prefetch thread reads on while the loop is paused (the first step's compile
  # here), banking at most 3 batches (2 queued, 1 in hand) that later steps take at once; single
  # intervals can be quicker, but the whole run cannot outpace the iterator: step 1 waits for its
  # batch and steps 2-10 need (9 - 3) more sleeps of 0.25 s outside the pause.
  wall = sum(r["step_time"] * 2 for r in records)
  waited = sum(r["data_wait_fraction"] * r["step_time"] * 2 for r in records)
  assert wall >= (1 + 9 - 3) * 0.25, records
  assert waited / wall > 0.5, records
  assert records[0]["data_wait_fraction"] > 0.5, records[0]


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v5p", 459e12), ("TPU v5", 459e12), ("cpu", None), ("NVIDIA GeForce RTX 4090", None)])
def test_peak_table(kind, peak):
  assert chrono.peak_flops_per_chip(kind) == peak


def test_mfu_arithmetic():
  # 8 chips at 989 TFLOP/s; 4e15 FLOPs per step (summed over chips) in 0.5 s -> 8e15 / 7.912e15.
  assert chrono.mfu(4e15, 0.5, 989e12, 8) == pytest.approx(8e15 / (8 * 989e12))


def test_interval_excludes_pauses_and_reports_mfu():
  now = [0.0]

  def advance(seconds):
    now[0] += seconds

  c = chrono.Chrono(8, "NVIDIA H100 80GB HBM3", clock=lambda: now[0])
  c.start(0)
  with c.waiting():
    advance(1.0)
  with c.paused():  # A compile.
    advance(20.0)
  c.compiled(20.0)
  c.stepped(32, 8e15)
  advance(3.0)
  c.tick()
  with c.waiting():
    advance(1.0)
  c.stepped(32, 8e15)
  advance(3.0)
  out = c.interval(2)  # Forced read inside step 2's iteration: the interval ends now.
  assert out["step_time"] == pytest.approx(4.0)
  assert out["examples_per_sec"] == pytest.approx(8.0)
  assert out["data_wait_fraction"] == pytest.approx(0.25)
  assert out["compile_time"] == pytest.approx(20.0)
  assert out["flops"] == pytest.approx(8e15)
  assert out["mfu"] == pytest.approx(8e15 / 4.0 / (8 * 989e12))
  with c.paused():  # A checkpoint save.
    advance(50.0)
  c.tick()
  assert c.interval(2) == {}  # Nothing new since.
  with c.waiting():
    advance(2.0)
  c.stepped(32, None)  # A shape without cost analysis: no FLOPs for the interval.
  c.tick()
  advance(7.0)  # Read one step late, after the iteration ended: not part of step 3's interval.
  out = c.interval(3)
  assert out["step_time"] == pytest.approx(2.0) and out["data_wait_fraction"] == pytest.approx(1.0)
  assert "compile_time" not in out and "flops" not in out and "mfu" not in out


def test_compiled_step_compiles_once_per_shape(caplog):
  c = chrono.Chrono(1, "cpu")
  c.start(0)
  step = chrono.CompiledStep(jax.jit(lambda s, b: (s + b["x"].sum(), b["x"].mean())), c, num_devices=1)
  state = jnp.zeros(())
  with caplog.at_level(logging.INFO, logger="zsl_jax.chrono"):
    for rows in (8, 8, 16, 8):
      state, _ = step(state, {"x": jnp.ones((rows, 4))})
  assert float(state) == 4 * (8 + 8 + 16 + 8)
  assert len(step.executables) == 2
  assert sum("compiled the train step" in m for m in caplog.messages) == 2
  c.tick()
  out = c.interval(4)
  assert out["compile_time"] > 0
  assert out["examples_per_sec"] * out["step_time"] == pytest.approx(10.0)  # Mean rows per step.


def test_flops_are_summed_over_the_mesh():
  """cost_analysis() of an SPMD executable is per device; CompiledStep multiplies by the mesh size."""
  w = np.ones((256, 256), np.float32)
  x = np.ones((64, 256), np.float32)
  fn = lambda w, b: (w, jnp.sum(b["x"] @ w @ w))
  flops = {}
  for n in (1, 8):
    mesh = sharding.make_mesh(dict(data=n, fsdp=1), jax.devices()[:n])
    step = chrono.CompiledStep(jax.jit(fn), chrono.Chrono(n, "cpu"), num_devices=n)
    ws = jax.device_put(w, sharding.replicated(mesh))
    step(ws, sharding.global_batch({"x": x}, mesh))
    (_, flops[n]), = step.executables.values()
  assert flops[1] >= 2 * 2 * 64 * 256 * 256
  assert flops[8] == pytest.approx(flops[1], rel=0.05)
