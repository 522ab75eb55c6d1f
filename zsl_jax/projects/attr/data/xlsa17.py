"""xlsa17 files (Xian et al.'s proposed split): `att_splits.mat`, `res101.mat` and their image paths.

Conventions of the files: indices and labels are 1-based MATLAB values and `att` is attributes x
classes; everything returned here is 0-based and classes-major. `DATASETS` names the three
benchmarks every reader and the demo accept.
"""
import os

import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import mat_files

DATASETS = ("AWA2", "CUB", "SUN")
SPLIT_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")

# Leading '/'-components of res101.mat `image_files` that DAZLE's extraction scripts drop before
# joining with the image root (the empty component before the leading '/' counts).
_STRIP = {"AWA2": 5, "CUB": 5, "SUN": 7}
_FIX = "pass the xlsa17 data folder of the dataset (it holds att_splits.mat and res101.mat)"


def check_dataset_name(name):
  """'awa2' -> 'AWA2'; UserError for names outside AWA2/CUB/SUN."""
  upper = str(name).upper()
  if upper not in DATASETS:
    raise UserError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
  return upper


def load_att_splits(path):
  """Reads xlsa17 `att_splits.mat`.

  Returns:
    dict with `att` [K, I] float64 (rows L2-normalised as shipped), `original_att` [K, I],
    `class_names` (K str), 0-based int64 `trainval_loc`, `test_seen_loc`, `test_unseen_loc` and
    `train_loc`/`val_loc` (None when absent, as in many CUB copies).
  """
  mat = mat_files.loadmat(path, "xlsa17 att_splits.mat", _FIX)
  mat_files.require(mat, ("att", "original_att", "allclasses_names") + SPLIT_KEYS, path, "xlsa17 att_splits.mat")
  att = np.asarray(mat["att"], np.float64).T  # [K, I]
  original = np.asarray(mat["original_att"], np.float64).T
  names = mat_files.cellstr(mat["allclasses_names"])
  if att.shape != original.shape or len(names) != att.shape[0]:
    raise UserError(f"{path}: att {att.shape[::-1]}, original_att {original.shape[::-1]} and "
                    f"{len(names)} class names disagree; re-download the xlsa17 att_splits.mat")
  out = {"att": att, "original_att": original, "class_names": names}
  for key in SPLIT_KEYS + ("train_loc", "val_loc"):
    out[key] = mat_files.zero_based(mat, key) if key in mat else None
  return out


def load_res101(path):
  """Reads the per-image part of xlsa17 `res101.mat` (not the 2048 x N pooled features).

  Returns:
    dict with `labels` int64 [N] (0-based class index in allclasses order) and `image_files`
    (N stored paths from the authors' machines).
  """
  mat = mat_files.loadmat(path, "xlsa17 res101.mat", _FIX, variable_names=["labels", "image_files"])
  mat_files.require(mat, ("labels", "image_files"), path, "xlsa17 res101.mat")
  labels = np.asarray(mat["labels"]).astype(np.int64).ravel() - 1
  files = mat_files.cellstr(mat["image_files"])
  if len(files) != labels.size:
    raise UserError(f"{path}: {len(files)} image_files but {labels.size} labels; re-download res101.mat")
  if labels.size and labels.min() < 0:
    raise UserError(f"{path}: labels hold 0; xlsa17 labels are 1-based")
  return {"labels": labels, "image_files": files}


def _relative_candidates(dataset, stored):
  """Relative image paths to try, starting with DAZLE's prefix rule, then shorter suffixes."""
  parts = stored.replace("\\", "/").split("/")
  k = _STRIP[dataset]
  out = []
  for drop in list(range(k, len(parts))) + list(range(k - 1, 0, -1)):
    rel = "/".join(p for p in parts[drop:] if p)
    if rel and rel not in out:
      out.append(rel)
  return out


def resolve_image_layout(dataset, image_root, image_files):
  """Finds how many leading components of the stored paths to drop so files exist under root.

  DAZLE drops k = 5 (AWA2, CUB) or 7 (SUN) components; users' folders differ (CUB's tarball has
  one `CUB_200_2011` level, DAZLE's layout two), so shorter suffixes are tried as well. The layout
  is decided on the first image that resolves and then applied to all images.

  Returns:
    a function stored_path -> absolute path under `image_root`.
  """
  dataset = check_dataset_name(dataset)
  if not os.path.isdir(image_root):
    raise UserError(f"image folder {image_root} does not exist; pass --images pointing at the {dataset} "
                    f"image root")
  for stored in image_files[:50]:
    for rel in _relative_candidates(dataset, stored):
      if os.path.isfile(os.path.join(image_root, rel)):
        suffix_len = len([p for p in rel.split("/") if p])

        def resolve(path, suffix_len=suffix_len):
          parts = [p for p in path.replace("\\", "/").split("/") if p]
          return os.path.join(image_root, *parts[-suffix_len:])
        return resolve
  tried = _relative_candidates(dataset, image_files[0])[:3] if image_files else []
  raise UserError(f"no image of res101.mat's image_files was found under {image_root} (tried e.g. "
                  f"{', '.join(os.path.join(image_root, t) for t in tried)}); pass --images as the folder "
                  f"that holds the dataset's image directory")


def check_locs(name, n, locs):
  """UserError when a split index points past the N images (split and image files of different datasets)."""
  for key, v in locs.items():
    if v is not None and v.size and v.max() >= n:
      raise UserError(f"{name}: {key} indexes image {v.max()} but there are only {n} images; the split file "
                      f"and the per-image file belong to different datasets")
