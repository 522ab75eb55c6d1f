"""DAZLE's training samplers (those of the official notebooks) on the core's sampling path.

"balanced": each batch draws min(#classes, B) classes without replacement, then B // that many
images per class with replacement (AWA2: 40 classes x 1 = an effective batch of 40; SUN: 50 of
645 classes). "uniform": B distinct images of a fresh random draw per batch (CUB). Both are the
core's generic samplers (`zsl_jax.data.sampling`); this module picks one by name, checks that the
devices can split its batch, and turns a host's rows into a batch of region features.
"""
import dataclasses

import numpy as np

from zsl_jax.data import sampling
from zsl_jax.errors import UserError

KINDS = ("balanced", "uniform")


def make_sampler(kind, rows, labels, batch_size, seed, num_devices=None):
  """The `contracts.Sampler` named by `config.data.sampler` over one split's rows [N] and labels [N]."""
  if kind == "balanced":
    sampler = sampling.BalancedSampler(rows, labels, batch_size, seed)
  elif kind == "uniform":
    sampler = sampling.UniformSampler(rows, batch_size, seed)
  else:
    raise UserError(f"sampler {kind!r}; use 'balanced' or 'uniform'")
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
