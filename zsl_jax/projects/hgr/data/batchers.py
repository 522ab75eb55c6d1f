"""Training iterators for ImageNet-21K: class-pure batches (HGR-Net) and shuffled batches.

HGR-Net trains on batches that hold one class each, classes visited equally often (the
reference's per-class loaders + group sampler). Both batchers here are *random access*: the
example at (step, slot) is a pure function of the seed, so a grain `DatasetIterator`'s state is
just a position, restores exactly (also under `mp_prefetch`), and every host can compute the
same class for a step without talking to the others. Batches are process-local, padded to a
static size with `_mask` False where a class has fewer images than the batch.
"""
import functools
import math

import grain
import numpy as np

from zsl_jax.projects.hgr.data import imagenet21k
from zsl_jax.data import pipeline

INFINITE_STEPS = 2**40  # "Forever" for practical purposes, still a valid length for grain.


@functools.lru_cache(maxsize=64)
def _perm(n, *key):
  return np.random.default_rng(list(key)).permutation(n)


class ClassPureSlots:
  """Random-access (step, slot) -> {'row'}: step s draws one class, each host a slice of its images.

  Classes are visited in seeded random order, once per cycle of `num_classes` steps. A class's
  v-th visit takes batch v mod nb of its seeded per-pass image permutation (nb = ceil(n / B)),
  like a shuffled per-class DataLoader that restarts when exhausted. Host p of P takes images
  [p*b, (p+1)*b) of the step's global selection; missing ones are padding (row -1).
  """

  def __init__(self, labels, rows, global_batch_size, seed, process_index, process_count, num_steps):
    labels = np.asarray(labels)
    rows = np.asarray(rows, np.int64)
    order = np.argsort(labels, kind="stable")
    self.classes, starts = np.unique(labels[order], return_index=True)
    self.class_rows = np.split(rows[order], starts[1:]) if len(rows) else []
    self.global_batch = global_batch_size
    self.local_batch = pipeline.local_batch_size(global_batch_size, process_count)
    self.seed, self.p, self.num_steps = int(seed), process_index, num_steps

  def __len__(self):
    return self.num_steps * self.local_batch

  def step_class(self, step):
    """(position in self.classes, visit number) of the class drawn at `step`."""
    cycle, pos = divmod(int(step), len(self.classes))
    return int(_perm(len(self.classes), self.seed, 0, cycle)[pos]), cycle

  def step_rows(self, step):
    """The global selection of index rows for `step` (all hosts together), up to B rows."""
    c, visit = self.step_class(step)
    rows = self.class_rows[c]
    nb = math.ceil(len(rows) / self.global_batch)
    epoch, j = divmod(visit, nb)
    sel = _perm(len(rows), self.seed, 1, int(self.classes[c]), epoch)[j * self.global_batch:(j + 1) * self.global_batch]
    return rows[sel]

  def __getitem__(self, i):
    step, k = divmod(int(i), self.local_batch)
    rows = self.step_rows(step)
    pos = self.p * self.local_batch + k
    return {"row": np.int64(rows[pos] if pos < len(rows) else -1)}


class ShuffledSlots:
  """Random-access shuffled stream over this host's disjoint shard, reshuffled every pass."""

  def __init__(self, rows, seed, process_index, process_count):
    self.rows = np.asarray(rows, np.int64)[process_index::process_count]
    self.seed = int(seed)
    self._cached = (None, None)  # (epoch, permutation): one pass of 13M rows is 100 MB, keep one.

  def __getstate__(self):
    return {**self.__dict__, "_cached": (None, None)}

  def __len__(self):
    return INFINITE_STEPS * max(len(self.rows), 1)

  def __getitem__(self, i):
    epoch, j = divmod(int(i), len(self.rows))
    cached_epoch, perm = self._cached
    if cached_epoch != epoch:
      perm = np.random.default_rng([self.seed, 2, epoch]).permutation(len(self.rows))
      self._cached = (epoch, perm)
    return {"row": np.int64(self.rows[perm[j]])}


def steps_per_epoch(labels, global_batch_size, batcher="class_pure"):
  """Steps for one pass over the images: sum_c ceil(n_c / B) (class-pure) or N // B (shuffled)."""
  labels = np.asarray(labels)
  if batcher == "shuffled":
    return max(1, len(labels) // global_batch_size)
  counts = np.unique(labels, return_counts=True)[1]
  return int(np.ceil(counts / global_batch_size).sum())


def steps_for_epochs(index, epochs, split="train", classes="train", *, global_batch_size, batcher="class_pure"):
  """Configs state epochs; the engine counts steps. Rounds to at least one step."""
  per_epoch = steps_per_epoch(index.labels(index.rows(split, classes)), global_batch_size, batcher)
  return max(1, int(round(epochs * per_epoch)))


def train_dataset(index, split="train", classes="train", *, global_batch_size, batcher="class_pure", seed=0,
                  image_size=224, preprocess="clip", num_steps=None, process_index=None, process_count=None,
                  slots=None):
  """MapDataset of process-local batches {'image' [b, S, S, 3] f32, 'label' [b] i32, '_mask' [b], '_skipped' [b]}.

  Args:
    index: `imagenet21k.ImageIndex`.
    split, classes: instance split and class split (or WNID list) of the training images.
    batcher: 'class_pure' (one class per global batch, classes equally often) or 'shuffled'.
    num_steps: length in steps; None = practically infinite (epochs repeat).
    slots: the `ClassPureSlots` to read, for callers that also need each step's class (HGR-Net's
      contrasts); built here when None.
  """
  from zsl_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  p, count = pipeline.process_info(process_index, process_count)
  local = pipeline.local_batch_size(global_batch_size, count)
  rows = index.rows(split, classes)
  if not len(rows):
    raise UserError(f"split {split!r} with classes {classes!r} has no images; check the index and class lists")
  if batcher == "class_pure":
    if slots is None:
      slots = ClassPureSlots(index.labels(rows), rows, global_batch_size, seed, p, count, num_steps or INFINITE_STEPS)
  elif batcher == "shuffled":
    if len(rows) < count:
      raise UserError(f"{len(rows)} training images cannot be sharded over {count} processes")
    slots = ShuffledSlots(rows, seed, p, count)
    if num_steps:
      slots = grain.MapDataset.source(slots)[:num_steps * local]
  else:
    raise UserError(f"unknown batcher {batcher!r}; choose 'class_pure' or 'shuffled'")
  ds = grain.MapDataset.source(slots) if not isinstance(slots, grain.MapDataset) else slots
  return ds.map(imagenet21k.LoadImage(index, image_size, preprocess)).batch(local, drop_remainder=True)


def train_iterator(index, split="train", classes="train", *, global_batch_size, batcher="class_pure", seed=0,
                   image_size=224, preprocess="clip", num_steps=None, num_threads=8, prefetch_buffer_size=4,
                   num_workers=0, process_index=None, process_count=None):
  """The trainer's data iterator: a grain `DatasetIterator` with get_state()/set_state().

  `num_threads` decode images in parallel inside each process; `num_workers` > 0 adds grain
  worker processes (`mp_prefetch`). Store the iterator with `grain.checkpoint.CheckpointSave`.
  """
  ds = train_dataset(index, split, classes, global_batch_size=global_batch_size, batcher=batcher, seed=seed,
                     image_size=image_size, preprocess=preprocess, num_steps=num_steps,
                     process_index=process_index, process_count=process_count)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)
