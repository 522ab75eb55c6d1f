"""DAZLE's training samplers (those of the official notebooks) on the core's sampling path.

"balanced": each batch draws min(#classes, B) classes without replacement, then B // that many
images per class with replacement (AWA2: 40 classes x 1 = an effective batch of 40; SUN: 50 of
645 classes). "uniform": B distinct images of a fresh random draw per batch (CUB). Both are the
core's generic samplers (`zsl_jax.data.sampling`). "window" (`WindowSampler`, not in the notebooks)
visits every image once per epoch in an order that reads the feature file a window of chunks at a
time. This module picks one by name, checks that the devices can split its batch, and turns a
host's rows into a batch of region features.

Every sampler is a pure function of (seed, step) and gives the same stream whatever the feature
mode (`feature_store`: memory, chunk-aware or memory-mapped), so a resume is exact on any machine.
In chunk-aware mode the balanced and uniform samplers read their rows through the block cache.
"""
import dataclasses

import numpy as np

from zsl_jax.data import sampling
from zsl_jax.errors import UserError

KINDS = ("balanced", "uniform", "window")
WINDOW_ROWS = 4096  # Default window: ~1.6 GB of 49 x 2048 float32 regions.


class WindowSampler(sampling.ShuffledSampler):
  """Every row once per epoch, shuffled within windows of whole blocks of the feature file.

  Epoch e puts the blocks (`row // block_rows`, the file's chunk extent along the rows) that hold
  the split's rows in a seeded random order, cuts that order into windows of ceil(window_rows /
  block_rows) blocks, shuffles the rows inside each window and concatenates the windows. Batch
  `step` holds positions [step * B, (step + 1) * B) of the concatenated epochs (as ShuffledSampler),
  so a chunk-aware reader needs one window resident (two at a boundary) and inflates every block
  once per epoch. What it gives up against a full shuffle: a batch mixes rows of at most two
  windows, so rows of different windows never meet in a batch during that epoch, and on a
  class-sorted file (xlsa17 orders images by class) a window spans only a few classes (4,096 AWA2
  rows: ~6 of 50). The order is global: every host reads its slice of the same batches.
  """

  def __init__(self, rows, batch_size, seed, block_rows=1, window_rows=WINDOW_ROWS):
    super().__init__(rows, batch_size, seed)
    if int(block_rows) < 1 or int(window_rows) < 1:
      raise UserError(f"window sampler: block_rows={block_rows} and window_rows={window_rows} must be >= 1; "
                      f"set --config.data.window_rows")
    self.blocks = self.rows // int(block_rows)  # [N] block of each row
    self.window_blocks = -(-int(window_rows) // int(block_rows))

  def permutation(self, epoch):
    for cached_epoch, perm in self._cache:
      if cached_epoch == epoch:
        return perm
    rng = np.random.default_rng([self.seed, 3, epoch])
    uniq, block_pos = np.unique(self.blocks, return_inverse=True)
    window_of_block = np.empty(uniq.size, np.int64)
    window_of_block[rng.permutation(uniq.size)] = np.arange(uniq.size) // self.window_blocks
    perm = np.lexsort((rng.random(self.rows.size), window_of_block[block_pos]))  # [N] positions into rows
    self._cache = self._cache[-1:] + ((epoch, perm),)
    return perm


def make_sampler(kind, rows, labels, batch_size, seed, num_devices=None, *, block_rows=1, window_rows=WINDOW_ROWS):
  """The `contracts.Sampler` named by `config.data.sampler` over one split's rows [N] and labels [N].

  `block_rows` (the feature source's `block_rows`) and `window_rows` (`config.data.window_rows`)
  shape the "window" sampler only.
  """
  if kind == "balanced":
    sampler = sampling.BalancedSampler(rows, labels, batch_size, seed)
  elif kind == "uniform":
    sampler = sampling.UniformSampler(rows, batch_size, seed)
  elif kind == "window":
    sampler = WindowSampler(rows, batch_size, seed, block_rows, window_rows)
  else:
    raise UserError(f"sampler {kind!r}; use one of {', '.join(KINDS)}")
  if num_devices and sampler.batch_size % num_devices:
    raise UserError(f"the {kind} sampler yields batches of {sampler.batch_size} (batch_size={batch_size}, "
                    f"{np.unique(labels).size} classes) which {num_devices} devices cannot split evenly; "
                    f"choose --config.batch_size so that the effective batch divides by {num_devices}")
  return sampler


@dataclasses.dataclass
class LoadFeatures:
  """This host's rows [b] -> {'features' [b, R, F], 'label' [b] (universe position), 'index' [b]}."""
  source: object  # has get_batch(rows) -> [b, R, F] and `.labels`
  position: np.ndarray  # class id -> position in the training universe

  def __post_init__(self):
    self.position = np.asarray(self.position)

  def __call__(self, rows):
    return {"features": self.source.get_batch(rows),
            "label": self.position[self.source.labels[rows]].astype(np.int32),
            "index": rows.astype(np.int32)}
