"""The class-disjoint model-selection split inside trainval (`zsl.select_on='val'`, the default).

Note on xlsa17 `train_loc`/`val_loc`: in the distributed AWA2 and SUN files they partition the
seen-class images *including test_seen* (train_loc | val_loc == trainval_loc | test_seen_loc). They
are therefore intersected with `trainval_loc` before use, so model selection never touches test images.
"""
import numpy as np

from zsl_jax.errors import UserError

# The number of classes the xlsa17 PS split documents as validation classes.
_PS_VAL_CLASSES = {"AWA2": 13, "CUB": 50, "SUN": 65}


def _holdout_images(indices, labels, fraction, rng):
  """Per class, moves round(fraction * n_c) images (at least one when n_c >= 2) to a held-out set."""
  keep, held = [], []
  for c in np.unique(labels[indices]):
    rows = indices[labels[indices] == c]
    rows = rows[rng.permutation(rows.size)]
    n = int(round(fraction * rows.size))
    n = min(max(n, 1 if rows.size >= 2 else 0), rows.size - 1) if rows.size else 0
    held.append(rows[:n])
    keep.append(rows[n:])
  cat = lambda xs: np.sort(np.concatenate(xs)) if xs else np.zeros((0,), np.int64)
  return cat(keep), cat(held)


def validation_split(trainval, labels, *, train_loc=None, val_loc=None, dataset=None, seed=0,
                     val_seen_fraction=0.2, val_class_fraction=None):
  """Class-disjoint model-selection split inside trainval.

  With xlsa17 `train_loc`/`val_loc` (intersected with trainval, see the module docstring) the
  val_loc classes are pseudo-unseen; otherwise a seeded subset of the trainval classes is (the
  PS counts 13/50/65 for AWA2/CUB/SUN, else `val_class_fraction` of them, default 0.2). A seeded
  per-class slice of the remaining images is pseudo-seen.

  Returns:
    dict of sorted 0-based int64 `train`, `val_seen`, `val_unseen`, `val_classes`, and `source`.
  """
  rng = np.random.default_rng(seed)
  trainval = np.asarray(trainval, np.int64)
  labels = np.asarray(labels, np.int64)
  if train_loc is not None and val_loc is not None:
    in_tv = np.zeros(labels.size, bool)
    in_tv[trainval] = True
    pool = np.asarray(train_loc, np.int64)
    pool = np.sort(pool[in_tv[pool]])
    val_unseen = np.asarray(val_loc, np.int64)
    val_unseen = np.sort(val_unseen[in_tv[val_unseen]])
    val_classes = np.unique(labels[val_unseen])
    overlap = np.intersect1d(val_classes, np.unique(labels[pool]))
    if overlap.size:
      raise UserError(f"train_loc and val_loc share classes {overlap.tolist()[:5]}; the att_splits.mat is not an "
                      f"xlsa17 PS file (its val_loc classes must be disjoint from train_loc's)")
    source = "xlsa17 train_loc/val_loc"
  else:
    seen = np.unique(labels[trainval])
    if val_class_fraction is None and dataset in _PS_VAL_CLASSES and seen.size > 2 * _PS_VAL_CLASSES[dataset]:
      n_val = _PS_VAL_CLASSES[dataset]
    else:
      n_val = int(round((0.2 if val_class_fraction is None else val_class_fraction) * seen.size))
    n_val = min(max(n_val, 1), seen.size - 1)
    val_classes = np.sort(rng.choice(seen, n_val, replace=False))
    is_val = np.isin(labels[trainval], val_classes)
    val_unseen, pool = trainval[is_val], trainval[~is_val]
    source = f"seeded class split (seed {seed})"
  train, val_seen = _holdout_images(pool, labels, val_seen_fraction, rng)
  return {"train": train, "val_seen": val_seen, "val_unseen": val_unseen,
          "val_classes": np.asarray(val_classes, np.int64), "source": source}
