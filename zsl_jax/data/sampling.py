"""The one training-data path: step -> global row indices -> this host's rows -> batches.

A sampler (`zsl_jax.contracts.Sampler`) maps a step to the rows of the *global* batch, a pure
function of (seed, step). Every host computes the same global batch and loads only its contiguous
block of it (`host_slice`), so the hosts' batches concatenate to the single-host batch for any host
count (2 hosts x 4 devices train on exactly the batches of 1 host x 8), and a grain iterator's
state is a position that resumes the exact stream, also under `mp_prefetch`.
"""
import dataclasses

import grain
import numpy as np

from zsl_jax.data import pipeline
from zsl_jax.errors import UserError

ENDLESS = 2 ** 40  # Steps: "forever" for practical purposes, still a valid grain length.
PADDING = -1       # Row index of a padding slot (the loader marks it `_mask` False).


def host_slice(rows, process_index=None, process_count=None):
  """This host's contiguous block p of P of a global batch's rows ([B] -> [B / P])."""
  index, count = pipeline.process_info(process_index, process_count)
  local = pipeline.local_batch_size(len(rows), count)
  return rows[index * local:(index + 1) * local]


def _check_rows(rows, batch_size):
  rows = np.asarray(rows, np.int64)
  if rows.ndim != 1 or rows.size == 0:
    raise UserError("the training split has no examples; check the data files and the split/class settings")
  if int(batch_size) < 1:
    raise UserError(f"batch size {batch_size} must be at least 1; set --config.batch_size")
  return rows


class ShuffledSampler:
  """All rows, reshuffled by a seeded global permutation every epoch.

  Batch `step` holds positions [step * B, (step + 1) * B) of the concatenated epochs, so a batch
  may straddle two epochs and no row is dropped. The last two permutations are cached (one epoch
  of 13M rows is 100 MB): every slot of a batch is looked up separately when images are decoded
  one row at a time.
  """

  def __init__(self, rows, batch_size, seed):
    self.rows = _check_rows(rows, batch_size)  # [N]
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self._cache = ()  # ((epoch, permutation [N]), ...), replaced atomically (grain reads in threads).

  def __getstate__(self):
    return {**self.__dict__, "_cache": ()}

  def permutation(self, epoch):
    for cached_epoch, perm in self._cache:
      if cached_epoch == epoch:
        return perm
    perm = np.random.default_rng([self.seed, 2, epoch]).permutation(self.rows.size)
    self._cache = self._cache[-1:] + ((epoch, perm),)
    return perm

  def __call__(self, step):
    first = int(step) * self.batch_size
    epoch, pos = np.divmod(np.arange(first, first + self.batch_size, dtype=np.int64), self.rows.size)  # [B]
    out = np.empty(self.batch_size, np.int64)
    for e in np.unique(epoch):
      sel = epoch == e
      out[sel] = self.rows[self.permutation(int(e))[pos[sel]]]
    return out


class UniformSampler:
  """B distinct rows of a fresh seeded draw per step (DAZLE's 'uniform' sampler, CUB)."""

  def __init__(self, rows, batch_size, seed):
    self.rows = _check_rows(rows, batch_size)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    if self.batch_size > self.rows.size:
      raise UserError(f"batch size {self.batch_size} exceeds the {self.rows.size} training images; "
                      f"lower --config.batch_size")

  def __call__(self, step):
    return np.random.default_rng([self.seed, int(step)]).choice(self.rows, self.batch_size, replace=False)


class BalancedSampler:
  """min(#classes, B) distinct classes per step, B // that many rows of each, drawn with replacement.

  DAZLE's 'balanced' sampler: the batch rounds down to whole classes, so `batch_size` (the rows
  really drawn) can be smaller than the requested size (AWA2: 40 classes x 1 of a requested 50).
  """

  def __init__(self, rows, labels, batch_size, seed):
    rows = _check_rows(rows, batch_size)
    labels = np.asarray(labels)
    if labels.shape != rows.shape:
      raise UserError(f"{labels.size} labels for {rows.size} training rows; the data files disagree")
    self.classes, counts = np.unique(labels, return_counts=True)
    order = np.argsort(labels, kind="stable")
    self.class_rows = rows[order]  # [N]: each class's rows in their split order, class after class
    self.class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [C]
    self.class_size = counts  # [C]
    self.classes_per_batch = min(self.classes.size, int(batch_size))
    self.per_class = int(batch_size) // self.classes_per_batch
    self.batch_size = self.classes_per_batch * self.per_class
    self.seed = int(seed)

  def __call__(self, step):
    rng = np.random.default_rng([self.seed, int(step)])
    picked = rng.choice(self.classes.size, self.classes_per_batch, replace=False)  # [K]
    # One draw with per-class bounds: the same numbers, in the same order, as one
    # `rng.choice(rows of class c, per_class)` per picked class (numpy's bounded integers), at a
    # sixth of the CPU (it was a seventh of the DAZLE input path's).
    within = rng.integers(0, self.class_size[picked][:, None], size=(picked.size, self.per_class))  # [K, b]
    return self.class_rows[(self.class_start[picked][:, None] + within).reshape(-1)]


@dataclasses.dataclass
class _LoadStep:
  """Step -> load(this host's rows of the step's global batch)."""
  sampler: object
  load: object
  process_index: int
  process_count: int

  def __call__(self, step):
    return self.load(host_slice(self.sampler(step), self.process_index, self.process_count))


class _RowOf:
  """Element k -> {'row': row k mod b of this host's slice of step k div b}, for per-row decoding."""

  def __init__(self, sampler, process_index, process_count, local):
    self.sampler, self.process_index, self.process_count, self.local = sampler, process_index, process_count, local
    self._cache = ()  # ((step, rows [b]), ...): the b slots of a step are read one by one.

  def __getstate__(self):
    return {**self.__dict__, "_cache": ()}

  def __call__(self, k):
    step, j = divmod(int(k), self.local)
    for cached_step, rows in self._cache:
      if cached_step == step:
        return {"row": np.int64(rows[j])}
    rows = host_slice(np.asarray(self.sampler(step), np.int64), self.process_index, self.process_count)
    self._cache = self._cache[-7:] + ((step, rows),)
    return {"row": np.int64(rows[j])}


def batches(sampler, load, *, per_row=False, step_map=None, process_index=None, process_count=None):
  """MapDataset whose element `step` is this host's part of the sampler's global batch `step`.

  Args:
    sampler: a `contracts.Sampler`; its batch size must divide by the process count.
    load: per_row=False: this host's rows [b] (int64, -1 = padding) -> batch dict (e.g. features
      read from an array store). per_row=True: a grain Map or callable {'row': r} -> example dict,
      run per row so `num_threads` decode images in parallel; the examples are stacked to [b, ...].
    step_map: optional (step, batch) -> batch for what the whole step shares (HGR-Net's contrasts).
  """
  index, count = pipeline.process_info(process_index, process_count)
  local = pipeline.local_batch_size(sampler.batch_size, count)
  if per_row:
    ds = grain.MapDataset.range(ENDLESS * local).map(_RowOf(sampler, index, count, local))
    ds = ds.map(load).batch(local, drop_remainder=True)
  else:
    ds = grain.MapDataset.range(ENDLESS).map(_LoadStep(sampler, load, index, count))
  return ds if step_map is None else ds.map_with_index(step_map)


def iter_dataset(sampler, load, *, per_row=False, step_map=None, num_threads=None, prefetch=None, num_workers=0,
                 process_index=None, process_count=None):
  """`batches` read ahead by `num_threads` threads and `num_workers` processes (`pipeline.to_iter_dataset`:
  0 = from the core count, None = grain's defaults)."""
  ds = batches(sampler, load, per_row=per_row, step_map=step_map, process_index=process_index,
               process_count=process_count)
  return pipeline.to_iter_dataset(ds, num_threads, prefetch, num_workers)


def iterator(sampler, load, **kwargs):
  """A trainer's `train_iterator()`: an endless grain DatasetIterator (get_state/set_state) of `iter_dataset`."""
  return iter(iter_dataset(sampler, load, **kwargs))
