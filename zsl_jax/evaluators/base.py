"""The evaluator side of the contract, and the one padded, masked evaluation loop every evaluator uses.

`config.evals.<name> = dict(type=T, every_steps=N, at_start=False, **fields)`: the engine builds
`T.Evaluator(EvalContext(name, mesh, workdir, offer=trainer.eval_offer()), **fields)` (see
`zsl_jax.contracts`) and calls `run(state, step)` every N steps, at the end, and at step 0 with
`at_start`. The returned {metric: value} is written with `split=<name>`.

The loop (`evaluate_batches`) turns each host's padded batches (`pipeline.padded_eval_dataset`:
every example once over all hosts, padding masked) into global arrays and hands them to a jitted
function that returns two things:
  sums: arrays already reduced over the global batch. A `.sum()` inside jit of a global array is
        a sum over every host, so these are accumulated on device and read once, at the end;
        host memory stays O(size of the sums), however many examples there are.
  rows: per-example outputs, gathered onto every host with the masked rows dropped. Only for
        metrics that need every example at once (GZSL's calibration curve).
"""
import collections
import functools
import pathlib

import grain
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from zsl_jax import console
from zsl_jax import sharding
from zsl_jax.data import device_prefetch
from zsl_jax.data import pipeline

_POSITION = "_position"  # an example's place in its source, to return rows in source order


class Evaluator:
  """Optional base class: keeps the context's parts as attributes."""

  def __init__(self, context):
    self.context = context
    self.name = context.name
    self.mesh = context.mesh
    self.workdir = pathlib.Path(context.workdir)
    self.offer = context.offer

  def run(self, state, step):
    """`state` has "params" and "model_state" (global arrays); returns {name: python scalar}."""
    raise NotImplementedError


def model_variables(state):
  """{"params", <model-state collections>}: what flax's `apply` takes."""
  return {"params": state["params"], **state["model_state"]}


def to_host(tree):
  """Global jax.Arrays -> full numpy arrays on every host (gathered across processes)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


@functools.lru_cache(maxsize=None)
def _summing(mesh):
  """jitted (first part -> total, (total, part) -> total + part), replicated: every host reads the total."""
  replicated = sharding.replicated(mesh)
  first = jax.jit(lambda part: part, out_shardings=replicated)
  add = jax.jit(lambda total, part: jax.tree.map(jnp.add, total, part), out_shardings=replicated)
  return first, add


def evaluate_batches(batches, mesh, fn, prefetch=2):
  """The evaluation loop: (host numpy sums, host numpy rows or None) over all batches.

  Batches are built and sent to the devices by a background thread, `prefetch` ahead of the one
  computed (`device_prefetch`). The host reads the sums once, at the end; it waits only for the
  batch `prefetch` back to be computed (bounding the device memory held by queued batches), and
  reads per-example rows that late.

  Args:
    batches: iterable of this host's padded batches (dicts of numpy arrays with a `_mask` key),
      the same number on every host.
    mesh: the device mesh the global batches are split over.
    fn: jitted `global batch -> (sums, rows)`. `sums` is a pytree of arrays summed over the
      global batch (mask the padding inside), `rows` a dict of [b, ...] arrays or None.
  """
  first, add = _summing(mesh)
  total, parts, pending = None, [], collections.deque()  # pending: (sums, rows) of batches in flight
  bar = console.eval_bar(len(batches) if hasattr(batches, "__len__") else None)  # None unless a bar is wanted
  device_batches = device_prefetch.DevicePrefetch(batches, mesh, size=prefetch)
  try:
    for batch in device_batches:
      if bar is not None:
        bar.update(1)
      sums, rows = fn(batch)
      total = first(sums) if total is None else add(total, sums)
      pending.append((sums, None if rows is None else {**rows, pipeline.MASK_KEY: batch[pipeline.MASK_KEY]}))
      if len(pending) > prefetch:
        parts += _settle(pending.popleft())
  finally:
    device_batches.close()
    if bar is not None:
      bar.close()
  while pending:
    parts += _settle(pending.popleft())
  sums = jax.device_get(total) if total is not None else None
  if not parts:
    return sums, None
  cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  keep = cat.pop(pipeline.MASK_KEY).astype(bool)
  return sums, {k: v[keep] for k, v in cat.items()}


def _settle(done):
  """Waits for a batch computed a few batches ago; its rows (if any) on the host, as a 0- or 1-list."""
  sums, rows = done
  jax.block_until_ready(sums)
  return [] if rows is None else [to_host(rows)]


def _with_position(i, example):
  return {**example, _POSITION: np.int64(i)}


def map_batches(source, fn, *, mesh, global_batch_size, keep=("label", "index")):
  """Per-example outputs of jitted `fn(global batch) -> {name: [b, ...]}` over a random-access source.

  Returns host arrays of every example once, in source order whatever the host layout, with the
  batch keys in `keep` that the source has (e.g. each example's `label`); None for an empty source.
  """
  if len(source) == 0:
    return None
  ds = grain.MapDataset.source(source).map_with_index(_with_position)
  batches = pipeline.padded_eval_dataset(ds, global_batch_size)

  def rows(batch):
    return {}, {**fn(batch), **{k: batch[k] for k in keep + (_POSITION,) if k in batch}}

  out = evaluate_batches(batches, mesh, rows)[1]
  order = np.argsort(out.pop(_POSITION), kind="stable")
  return {k: v[order] for k, v in out.items()}


def round_batch_size(batch_size, mesh):
  """The smallest multiple of the device count >= `batch_size` (global batches split over all devices)."""
  n = mesh.devices.size
  return -(-int(batch_size) // n) * n
