"""grain plumbing shared by every method: this host's share of a batch and exact, padded evaluation.

Training batches come from `zsl_jax.data.sampling` (step -> global rows -> this host's slice).

Evaluation must count every example exactly once, also across hosts. Each host takes a
contiguous slice of the examples, padded up to the same number of full batches on every host;
padding examples carry `_mask = False`, so metrics summed with the mask are exact and no host
waits on a collective that another host never reaches (big_vision's "pad + mask" scheme).
"""
import dataclasses
import math

import grain
import jax
import numpy as np

from zsl_jax.errors import UserError

MASK_KEY = "_mask"


def process_info(process_index=None, process_count=None):
  """(index, count) of this host, defaulting to JAX's multi-controller runtime."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return index, count


def local_batch_size(global_batch_size, process_count=None):
  """Configs state global batch sizes; each host loads its share."""
  _, count = process_info(None, process_count)
  if global_batch_size % count:
    raise UserError(f"global batch size {global_batch_size} is not divisible by the {count} processes; "
                    f"set the batch size to a multiple of {count}")
  return global_batch_size // count


def eval_host_range(num_examples, local_batch, process_index, process_count):
  """Contiguous [start, stop) of this host plus the padded length every host iterates over."""
  per_host = math.ceil(num_examples / process_count)
  padded = max(1, math.ceil(per_host / local_batch)) * local_batch
  start = min(process_index * per_host, num_examples)
  stop = min(start + per_host, num_examples)
  return start, stop, padded


@dataclasses.dataclass(frozen=True)
class _PaddedSlice:
  """Random-access view: positions past the slice repeat its last example with `_mask` False."""
  dataset: grain.MapDataset
  start: int
  stop: int
  zero_on_pad: tuple = ()

  def __call__(self, i):
    n = self.stop - self.start
    if n == 0:
      raise IndexError("empty host slice has no example to pad with")
    example = dict(self.dataset[self.start + min(i, n - 1)])
    example[MASK_KEY] = np.bool_(bool(example.get(MASK_KEY, True)) and i < n)
    if i >= n:  # Per-example counters (e.g. `_skipped`) must not count the repeated example twice.
      for k in self.zero_on_pad:
        example[k] = np.zeros_like(example[k])
    return example


def padded_eval_dataset(dataset, global_batch_size, *, process_index=None, process_count=None, zero_on_pad=()):
  """Batches a MapDataset of dict examples for exact evaluation on this host.

  Args:
    dataset: `grain.MapDataset` of dicts (already decoded/preprocessed, or lazily mapped). An
      example may itself set `_mask` False (e.g. an undecodable image) to be excluded.
    global_batch_size: summed over hosts; must divide by the process count.
    zero_on_pad: keys zeroed in padding examples (counters such as `_skipped` that a sum over
      batches must count once).
  Returns:
    `grain.MapDataset` of stacked batches [local_batch, ...] with a boolean `_mask`; every host
    yields the same number of batches, and over all hosts each example appears unmasked once.
  """
  index, count = process_info(process_index, process_count)
  local = local_batch_size(global_batch_size, count)
  n = len(dataset)
  start, stop, padded = eval_host_range(n, local, index, count)
  if stop == start:  # A host with no examples still runs its batches, all masked.
    start, stop = max(n - 1, 0), n
    view = _PaddedSlice(dataset, start, stop, tuple(zero_on_pad))
    rows = grain.MapDataset.range(padded).map(lambda i: {**view(i + 1), MASK_KEY: np.bool_(False)})
  else:
    rows = grain.MapDataset.range(padded).map(_PaddedSlice(dataset, start, stop, tuple(zero_on_pad)))
  return rows.batch(local, drop_remainder=True)
