"""DAZLE's training samplers as resumable grain datasets (dazle_vsmr.md §1.6).

"balanced": each batch draws min(#classes, B) classes without replacement, then B // that many
images per class with replacement (AWA2: 40 classes x 1 = an effective batch of 40; SUN: 50 of
645 classes). "uniform": B distinct images of a fresh random permutation per batch (CUB). Batch
`step` is a pure function of (seed, step), so every host computes the same global batch and loads
only its own rows, and the grain iterator state (a position) resumes the exact stream.
"""
import dataclasses

import grain
import numpy as np

from zsl_jax.data import pipeline
from zsl_jax.errors import UserError

_ENDLESS = 2 ** 40


def effective_batch_size(kind, batch_size, num_classes):
  """Rows per batch the sampler really yields (balanced rounds down to whole classes)."""
  if kind == "balanced":
    n_cls = min(num_classes, batch_size)
    return n_cls * (batch_size // n_cls)
  if kind == "uniform":
    return batch_size
  raise UserError(f"sampler {kind!r}; use 'balanced' or 'uniform'")


@dataclasses.dataclass
class BatchIndices:
  """step -> global batch of row indices [B_eff] (into the feature source)."""
  kind: str
  rows: np.ndarray  # [N] candidate rows (one split)
  labels: np.ndarray  # [N] their class ids
  batch_size: int
  seed: int

  def __post_init__(self):
    self.rows = np.asarray(self.rows, np.int64)
    self.labels = np.asarray(self.labels)
    if self.rows.size == 0:
      raise UserError("the training split is empty; check the data files")
    self.classes = np.unique(self.labels)
    self.by_class = [self.rows[self.labels == c] for c in self.classes]
    self.size = effective_batch_size(self.kind, self.batch_size, self.classes.size)
    if self.kind == "uniform" and self.batch_size > self.rows.size:
      raise UserError(f"batch size {self.batch_size} exceeds the {self.rows.size} training images")

  def __call__(self, step):
    rng = np.random.default_rng([self.seed, int(step)])
    if self.kind == "uniform":
      return rng.choice(self.rows, self.batch_size, replace=False)
    n_cls = min(self.classes.size, self.batch_size)
    per = self.batch_size // n_cls
    picked = rng.choice(self.classes.size, n_cls, replace=False)
    return np.concatenate([rng.choice(self.by_class[c], per, replace=True) for c in picked])


@dataclasses.dataclass
class _LoadLocal:
  """Global batch indices -> this host's rows: {'features' [b, R, F], 'label' (universe position)}."""
  indices: BatchIndices
  source: object  # has get_batch(rows) -> [b, R, F] and `.labels`
  position: np.ndarray  # class id -> position in the training universe
  process_index: int
  local: int

  def __call__(self, step):
    rows = self.indices(step)[self.process_index * self.local:(self.process_index + 1) * self.local]
    return {"features": self.source.get_batch(rows),
            "label": self.position[self.source.labels[rows]].astype(np.int32),
            "index": rows.astype(np.int32)}


def train_iterator(kind, rows, labels, source, position, batch_size, seed, num_devices=None, *,
                   process_index=None, process_count=None):
  """Endless, resumable iterator of this host's batches (hosts concatenate to the global batch)."""
  indices = BatchIndices(kind, rows, labels, batch_size, seed)
  index, count = pipeline.process_info(process_index, process_count)
  if num_devices and indices.size % num_devices:
    raise UserError(f"the {kind} sampler yields batches of {indices.size} (batch_size={batch_size}, "
                    f"{indices.classes.size} classes) which {num_devices} devices cannot split evenly; "
                    f"choose --config.batch_size so that the effective batch divides by {num_devices}")
  local = pipeline.local_batch_size(indices.size, count)
  ds = grain.MapDataset.range(_ENDLESS).map(_LoadLocal(indices, source, np.asarray(position), index, local))
  return iter(ds.to_iter_dataset())
