"""Read-ahead settings from the core count, device prefetch with an exact checkpointed position, and the
evaluation loop over prefetched batches."""
import json
import time

import grain
import jax
import numpy as np
import pytest

from zsl_jax import sharding
from zsl_jax.data import device_prefetch
from zsl_jax.data import pipeline
from zsl_jax.data import sampling
from zsl_jax.errors import UserError
from zsl_jax.evaluators import base as eval_base


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh({"data": -1, "fsdp": 1})  # the 8 simulated devices


def test_read_settings_from_cores():
  assert pipeline.read_settings(0, 0, 0, cores=16) == (16, 32, 0)
  assert pipeline.read_settings(0, 0, 4, cores=16) == (4, 8, 4)   # threads per worker process
  assert pipeline.read_settings(0, 0, 0, cores=1) == (1, 2, 0)
  assert pipeline.read_settings(3, 0, 0, cores=16) == (3, 6, 0)   # explicit threads, prefetch follows
  assert pipeline.read_settings(16, 4, 2, cores=16) == (16, 4, 2)  # explicit values kept
  assert pipeline.read_settings(None, None, 0, cores=16) == (None, None, 0)  # grain's defaults
  assert pipeline.available_cores() >= 1
  for bad in ((-1, 0, 0), (0, -2, 0), (0, 0, -1)):
    with pytest.raises(UserError):
      pipeline.read_settings(*bad, cores=4)


def _host_iterator(num_threads=2):
  """A checkpointable grain iterator of [8] batches: shuffled rows 0..49, each row its own value."""
  sampler = sampling.ShuffledSampler(np.arange(50), 8, seed=0)
  return sampling.iterator(sampler, lambda rows: {"x": rows.astype(np.int32)}, num_threads=num_threads, prefetch=0)


def _take(it, n):
  return [np.asarray(next(it)["x"]) for _ in range(n)]


def test_prefetched_batches_are_global_and_pass_through(mesh):
  it = device_prefetch.prefetch(_host_iterator(), mesh, size=2)
  want = _take(_host_iterator(), 4)
  for w in want:
    batch = next(it)
    assert isinstance(batch["x"], jax.Array) and batch["x"].sharding == sharding.batch_sharding(mesh)
    assert sharding.global_batch(batch, mesh)["x"] is batch["x"]  # the train loop's call changes nothing
    np.testing.assert_array_equal(np.asarray(batch["x"]), w)


@pytest.mark.parametrize("size", [1, 3])
def test_state_is_the_last_consumed_batch(mesh, size):
  it = device_prefetch.prefetch(_host_iterator(), mesh, size=size)
  _take(it, 3)
  for _ in range(1000):  # until the reader thread has read `size` batches past the consumed ones
    if it._queue.full():  # pylint: disable=protected-access
      break
    time.sleep(0.01)
  assert it._queue.full()  # pylint: disable=protected-access
  state = it.get_state()
  plain = _host_iterator()
  _take(plain, 3)
  assert isinstance(state, bytes) and json.loads(state) == plain.get_state()
  want = _take(it, 4)
  resumed = device_prefetch.prefetch(_host_iterator(), mesh, size=size)
  _take(resumed, 1)  # batches prefetched before the restore are dropped
  resumed.set_state(state)
  np.testing.assert_array_equal(_take(resumed, 4), want)
  resumed.close()  # the engine closes the iterator it trains from; the wrapped grain iterator closes too
  with pytest.raises(ValueError, match="closed iterator"):
    next(resumed)


def test_start_reads_ahead_before_the_first_next_and_keeps_the_stream(mesh):
  """The train loop calls start() before its start evaluations: batches are read meanwhile, the state
  still names the first batch, and a restore after start() drops what was read ahead."""
  it = device_prefetch.prefetch(_host_iterator(), mesh, size=2)
  initial = it.get_state()
  it.start()
  it.start()  # idempotent
  for _ in range(1000):
    if it._queue.full():  # pylint: disable=protected-access
      break
    time.sleep(0.01)
  assert it._queue.full() and it.get_state() == initial  # pylint: disable=protected-access
  want = _take(_host_iterator(), 5)
  np.testing.assert_array_equal(_take(it, 2), want[:2])
  state = it.get_state()
  resumed = device_prefetch.prefetch(_host_iterator(), mesh, size=2)
  resumed.start()
  resumed.set_state(state)
  np.testing.assert_array_equal(_take(resumed, 3), want[2:])
  it.close()
  resumed.close()


def test_reader_errors_surface_in_next(mesh):
  def broken():
    yield {"x": np.arange(8)}
    raise UserError("image index is gone; rebuild it")
  it = device_prefetch.prefetch(broken(), mesh)
  next(it)
  for _ in range(2):  # and again on a later call, not a hang
    with pytest.raises(UserError, match="index is gone"):
      next(it)


def test_grain_checkpoint_handler_round_trips_old_and_new_states(mesh, tmp_path):
  """Orbax's grain handler (what the engine's checkpoints use), both ways with checkpoints of plain iterators."""
  handler = grain.checkpoint.CheckpointHandler()
  for name in ("plain", "wrapped"):
    (tmp_path / name).mkdir()
  plain = _host_iterator()
  _take(plain, 2)
  handler.save(tmp_path / "plain", item=plain)  # a checkpoint written before device prefetch
  wrapped = device_prefetch.prefetch(_host_iterator(), mesh)
  _take(wrapped, 2)
  handler.save(tmp_path / "wrapped", item=wrapped)
  want = _take(plain, 3)
  for saved in ("plain", "wrapped"):
    restored = handler.restore(tmp_path / saved, item=device_prefetch.prefetch(_host_iterator(), mesh))
    np.testing.assert_array_equal(_take(restored, 3), want, err_msg=saved)
  back = handler.restore(tmp_path / "wrapped", item=_host_iterator())  # and into a plain iterator again
  np.testing.assert_array_equal([b["x"] for b in (next(back) for _ in range(3))], want)


def test_iterators_without_state_stay_without(mesh):
  it = device_prefetch.prefetch(iter([{"x": np.arange(8)}] * 3), mesh)
  assert not hasattr(it, "get_state")  # the engine then warns that a resume restarts the stream
  assert len(list(it)) == 3


def test_evaluation_loop_over_prefetched_batches_is_exact(mesh):
  """Sums read once at the end and per-example rows read a few batches late: every example once, in order."""
  source = [{"value": np.float32(i), "label": np.int32(i % 3)} for i in range(53)]
  fn = jax.jit(lambda b: {"double": 2 * b["value"]})
  out = eval_base.map_batches(source, fn, mesh=mesh, global_batch_size=8)
  np.testing.assert_array_equal(out["double"], 2 * np.arange(53, dtype=np.float32))
  np.testing.assert_array_equal(out["label"], np.arange(53) % 3)
  batches = pipeline.padded_eval_dataset(grain.MapDataset.source(source), 16)

  def count(b):
    m = b[pipeline.MASK_KEY]
    return {"n": m.sum(), "total": (b["value"] * m).sum()}, None
  for prefetch in (1, 2, 4):
    sums, rows = eval_base.evaluate_batches(batches, mesh, jax.jit(count), prefetch=prefetch)
    assert rows is None and int(sums["n"]) == 53 and float(sums["total"]) == sum(range(53))
