"""HGR-Net's class-pure sampler and the epoch length of ImageNet-21K training.

HGR-Net trains on batches that hold one class each, classes visited equally often (the
reference's per-class loaders + group sampler). `ClassPureSampler` is a `contracts.Sampler`: the
rows of step s are a pure function of (seed, s), so every host computes the same class for a step
without talking to the others and loads its slice through `zsl_jax.data.sampling`. Batches have a
static size, padded with row -1 (`_mask` False) where a class has fewer images than the batch.

`classes_per_step` P > 1 (`hgr.classes_per_step`, not the reference's) splits a batch into P
class-pure slots of B / P images: slot j of step s holds the class at position s * P + j of the
cycle sequence. One class per step is a one-class gradient per step; a model trained from scratch
on such steps never learns to tell apart classes that share the easy factor (measured on the demo:
even the flat cross-entropy baseline then stays at chance within a colour), while P > 1 lets every
step contrast several classes. P = 1 draws exactly the reference's stream.
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
  """step -> [B] rows: P class-pure slots of B / P rows each, -1 padded (P = `classes_per_step`).

  Classes are visited in seeded random order, once per cycle of `num_classes` positions; step s
  takes positions s * P ... s * P + P - 1 (with P = 1: one cycle per `num_classes` steps; a step that
  spans two cycles may hold a class twice, in two slots with different images). A
  class's v-th visit takes batch v mod nb of its seeded per-pass image permutation
  (nb = ceil(n / slot size)), like a shuffled per-class DataLoader that restarts when exhausted.
  """

  def __init__(self, labels, rows, batch_size, seed, classes_per_step=1):
    labels = np.asarray(labels)
    rows = np.asarray(rows, np.int64)
    if not len(rows):
      raise UserError("the class-pure sampler got no training images; check the index and class lists")
    order = np.argsort(labels, kind="stable")
    self.classes, starts = np.unique(labels[order], return_index=True)
    self.class_rows = np.split(rows[order], starts[1:])
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.classes_per_step = check_classes_per_step(classes_per_step, self.batch_size, len(self.classes))
    self.slot_size = self.batch_size // self.classes_per_step

  def position_class(self, position):
    """(index into self.classes, visit number) at `position` of the cycle sequence."""
    cycle, pos = divmod(int(position), len(self.classes))
    return int(_perm(len(self.classes), self.seed, 0, cycle)[pos]), cycle

  def step_class(self, step):
    """(index into self.classes, visit number) of the first (with P = 1 the only) class of `step`."""
    return self.position_class(int(step) * self.classes_per_step)

  def step_labels(self, step):
    """The class label of each of the step's P slots, in slot order."""
    p = self.classes_per_step
    return [int(self.classes[self.position_class(int(step) * p + j)[0]]) for j in range(p)]

  def step_label(self, step):
    """The class label every image of a one-class step has (the first slot's otherwise)."""
    return self.step_labels(step)[0]

  def slot_rows(self, position):
    """Index rows of the class at cycle `position` for its visit, without padding, up to B / P rows."""
    c, visit = self.position_class(position)
    rows = self.class_rows[c]
    size = self.slot_size
    nb = math.ceil(len(rows) / size)
    epoch, j = divmod(visit, nb)
    return rows[_perm(len(rows), self.seed, 1, int(self.classes[c]), epoch)[j * size:(j + 1) * size]]

  def step_rows(self, step):
    """The step's index rows without padding (all hosts together), up to B rows."""
    p = self.classes_per_step
    return np.concatenate([self.slot_rows(int(step) * p + j) for j in range(p)])

  def __call__(self, step):
    p = self.classes_per_step
    out = np.full((p, self.slot_size), sampling.PADDING, np.int64)  # [P, B / P]
    for j in range(p):
      rows = self.slot_rows(int(step) * p + j)
      out[j, :len(rows)] = rows
    return out.reshape(-1)                                          # [B]


def check_classes_per_step(classes_per_step, batch_size, num_classes=None):
  """P as an int, or a UserError naming the fix (P must divide the batch and, when `num_classes` is
  given, not exceed the classes)."""
  p = classes_per_step
  if not isinstance(p, int) or isinstance(p, bool) or p < 1:
    raise UserError(f"hgr.classes_per_step={p!r}; give a whole number of classes per step (1: the reference's "
                    f"class-pure steps)")
  if batch_size % p:
    raise UserError(f"hgr.classes_per_step={p} does not divide batch_size={batch_size}; every class gets "
                    f"batch_size / classes_per_step images: pick a divisor of {batch_size}")
  if num_classes is not None and p > num_classes:
    raise UserError(f"hgr.classes_per_step={p} exceeds the {num_classes} training classes; use at most {num_classes}")
  return p


def steps_per_epoch(labels, global_batch_size, batcher="class_pure", classes_per_step=1):
  """Steps for one pass over the images: sum_c ceil(n_c / (B / P)) / P (class-pure, P slots a step,
  rounded up) or N // B (shuffled)."""
  labels = np.asarray(labels)
  if batcher == "shuffled":
    return max(1, len(labels) // global_batch_size)
  counts = np.unique(labels, return_counts=True)[1]
  slots = int(np.ceil(counts / (global_batch_size // classes_per_step)).sum())
  return -(-slots // classes_per_step)
