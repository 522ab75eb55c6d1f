"""grain plumbing shared by every method: read-ahead settings, this host's share of a batch and exact,
padded evaluation.

Training batches come from `zsl_jax.data.sampling` (step -> global rows -> this host's slice).
Both training and evaluation iterate through `to_iter_dataset`: grain threads each build whole
batches, so the threads busy at once are min(num_threads, prefetch); 0 (the configs' default)
sizes both from the cores this process may use, so a 16-core host decodes 16 batches at once.
Batch buffers are reused from the heap rather than faulted in afresh every step (`host_memory`).

Evaluation must count every example exactly once, also across hosts. Each host takes a
contiguous slice of the examples, padded up to the same number of full batches on every host;
padding examples carry `_mask = False`, so metrics summed with the mask are exact and no host
waits on a collective that another host never reaches (big_vision's "pad + mask" scheme).
"""
import dataclasses
import logging
import math
import os

from absl import flags
import grain
import jax
import numpy as np

from zsl_jax.data import host_memory
from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)

MASK_KEY = "_mask"
AUTO = 0  # num_threads / prefetch / read-ahead value meaning "from the core count"


def available_cores():
  """CPU cores this process may run on (its affinity mask, e.g. a Slurm allocation), else all."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def read_settings(num_threads=AUTO, prefetch=AUTO, num_workers=0, cores=None):
  """(threads per process, prefetch buffer per process, worker processes) with AUTO values resolved.

  Threads: the cores divided among the worker processes (or the main one). Prefetch: twice the
  threads, so every thread has a batch to build while the consumer holds finished ones (grain
  otherwise caps the busy threads at the buffer size). Explicit values are kept; None keeps
  grain's own default.
  """
  cores = available_cores() if cores is None else int(cores)
  if num_workers is None or int(num_workers) < 0:
    raise UserError(f"num_workers={num_workers!r} must be >= 0 (0: decode in the main process)")
  workers = int(num_workers)
  threads = num_threads
  if num_threads is not None and int(num_threads) == AUTO:
    threads = max(1, cores // max(workers, 1))
  if prefetch is not None and int(prefetch) == AUTO:
    prefetch = 2 * (threads if threads is not None else grain.ReadOptions().num_threads)
  for name, v in (("num_threads", threads), ("prefetch", prefetch)):
    if v is not None and int(v) < 0:
      raise UserError(f"{name}={v} must be >= 0 (0: from the {cores} cores)")
  return threads, prefetch, workers


def to_iter_dataset(dataset, num_threads=AUTO, prefetch=AUTO, num_workers=0):
  """`MapDataset` -> `IterDataset` read ahead by threads (and `num_workers` processes) per `read_settings`."""
  threads, prefetch, workers = read_settings(num_threads, prefetch, num_workers)
  options = {}
  if threads is not None:
    options["num_threads"] = int(threads)
  if prefetch is not None:
    options["prefetch_buffer_size"] = int(prefetch)
  logger.info("grain read-ahead: %s threads, %s prefetched batches, %d worker processes (%d cores)",
              threads, prefetch, workers, available_cores())
  host_memory.keep_batch_buffers()
  it_ds = dataset.to_iter_dataset(grain.ReadOptions(**options))
  if workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; scripts and notebooks never parse them
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
  return it_ds


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
