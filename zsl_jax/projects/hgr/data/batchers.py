"""HGR-Net's class-pure sampler and the epoch length of ImageNet-21K training.

HGR-Net trains on batches that hold one class each, classes visited equally often (the
reference's per-class loaders + group sampler). `ClassPureSampler` is a `contracts.Sampler`: the
rows of step s are a pure function of (seed, s), so every host computes the same class for a step
without talking to the others and loads its slice through `zsl_jax.data.sampling`. Batches have a
static size, padded with row -1 (`_mask` False) where a class has fewer images than the batch.
The flat CLIP baseline uses the core's `sampling.ShuffledSampler` instead.
"""
import functools
import math

import numpy as np

from zsl_jax.data import sampling
from zsl_jax.errors import UserError


@functools.lru_cache(maxsize=64)
def _perm(n, *key):
  return np.random.default_rng(list(key)).permutation(n)


class ClassPureSampler:
  """step -> [B] rows of one class, -1 padded: the step's class and its next batch of images.

  Classes are visited in seeded random order, once per cycle of `num_classes` steps. A class's
  v-th visit takes batch v mod nb of its seeded per-pass image permutation (nb = ceil(n / B)),
  like a shuffled per-class DataLoader that restarts when exhausted.
  """

  def __init__(self, labels, rows, batch_size, seed):
    labels = np.asarray(labels)
    rows = np.asarray(rows, np.int64)
    if not len(rows):
      raise UserError("the class-pure sampler got no training images; check the index and class lists")
    order = np.argsort(labels, kind="stable")
    self.classes, starts = np.unique(labels[order], return_index=True)
    self.class_rows = np.split(rows[order], starts[1:])
    self.batch_size = int(batch_size)
    self.seed = int(seed)

  def step_class(self, step):
    """(position in self.classes, visit number) of the class drawn at `step`."""
    cycle, pos = divmod(int(step), len(self.classes))
    return int(_perm(len(self.classes), self.seed, 0, cycle)[pos]), cycle

  def step_label(self, step):
    """The class label every image of step `step` has."""
    return int(self.classes[self.step_class(step)[0]])

  def step_rows(self, step):
    """The step's index rows without padding (all hosts together), up to B rows."""
    c, visit = self.step_class(step)
    rows = self.class_rows[c]
    nb = math.ceil(len(rows) / self.batch_size)
    epoch, j = divmod(visit, nb)
    sel = _perm(len(rows), self.seed, 1, int(self.classes[c]), epoch)[j * self.batch_size:(j + 1) * self.batch_size]
    return rows[sel]

  def __call__(self, step):
    rows = self.step_rows(step)
    out = np.full(self.batch_size, sampling.PADDING, np.int64)  # [B]
    out[:len(rows)] = rows
    return out


def steps_per_epoch(labels, global_batch_size, batcher="class_pure"):
  """Steps for one pass over the images: sum_c ceil(n_c / B) (class-pure) or N // B (shuffled)."""
  labels = np.asarray(labels)
  if batcher == "shuffled":
    return max(1, len(labels) // global_batch_size)
  counts = np.unique(labels, return_counts=True)[1]
  return int(np.ceil(counts / global_batch_size).sum())
