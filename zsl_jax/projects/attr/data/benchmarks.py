"""AWA2 / CUB / SUN zero-shot benchmarks: xlsa17 `.mat` files, DAZLE hdf5 features, `ZSLDataset`.

Users arrive with the files of Xian et al.'s proposed split ("xlsa17": `att_splits.mat`,
`res101.mat`) and/or DAZLE's region-feature files (`feature_map_ResNet_101_<DS>.hdf5`, AWA2 is
~15 GB). This module turns either into one `ZSLDataset` that the DAZLE/VSMR trainers consume:
class-level data (attributes, names, split index arrays, seen/unseen classes, a validation split)
and a grain random-access source that reads region features row by row through h5py, so the whole
file never has to sit in RAM (but can, with `in_memory=True`, for CUB and the demo).

Conventions (dazle_vsmr.md §2): xlsa17 indices and labels are 1-based MATLAB values, the DAZLE hdf5
stores them 0-based; `att` is attributes x classes in the `.mat` and classes x attributes in the
hdf5. Everything returned here is 0-based, classes-major.

Note on `train_loc`/`val_loc`: in the distributed AWA2 and SUN files they partition the seen-class
images *including test_seen* (train_loc | val_loc == trainval_loc | test_seen_loc). They are
therefore intersected with `trainval_loc` before use, so model selection never touches test images.
"""
import dataclasses
import logging
import os

import numpy as np

from zsl_jax.errors import UserError

DATASETS = ("AWA2", "CUB", "SUN")

# Leading '/'-components of res101.mat `image_files` that DAZLE's extraction scripts drop before
# joining with the image root (the empty component before the leading '/' counts), and the number
# of classes the xlsa17 PS split documents as validation classes.
_STRIP = {"AWA2": 5, "CUB": 5, "SUN": 7}
_PS_VAL_CLASSES = {"AWA2": 13, "CUB": 50, "SUN": 65}

_SPLIT_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
_HDF5_KEYS = ("feature_map", "labels", "trainval_loc", "test_seen_loc", "test_unseen_loc", "att",
              "original_att")


def check_dataset_name(name):
  """'awa2' -> 'AWA2'; UserError for names outside AWA2/CUB/SUN."""
  upper = str(name).upper()
  if upper not in DATASETS:
    raise UserError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
  return upper


def _cellstr(cell):
  """MATLAB cell array of strings (as scipy loads it) -> list of Python str."""
  out = []
  for item in np.asarray(cell, dtype=object).ravel():
    while isinstance(item, np.ndarray):
      item = item.ravel()[0] if item.size else ""
    out.append(str(item))
  return out


def _loadmat(path, what, variable_names=None):
  import scipy.io  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise UserError(f"{what} not found at {path}; pass the xlsa17 data folder of the dataset "
                    f"(it holds att_splits.mat and res101.mat)")
  try:
    return scipy.io.loadmat(path, variable_names=variable_names)
  except NotImplementedError as e:  # MATLAB v7.3 files are hdf5, which scipy does not read.
    raise UserError(f"{path} is a MATLAB v7.3 file; re-save it in MATLAB with save(..., '-v7')") from e
  except (ValueError, TypeError, OSError) as e:
    raise UserError(f"{path} is not a readable MATLAB .mat file ({e}); re-download the xlsa17 {what}") from e


def _require(mat, keys, path, what):
  missing = [k for k in keys if k not in mat]
  if missing:
    raise UserError(f"{path} lacks {', '.join(missing)}; it is not an xlsa17 {what} "
                    f"(expected keys {', '.join(keys)})")


def _loc(mat, key):
  """1-based MATLAB index column -> 0-based int64 vector."""
  v = np.asarray(mat[key]).astype(np.int64).ravel() - 1
  if v.size and v.min() < 0:
    raise UserError(f"{key} holds index 0; xlsa17 indices are 1-based MATLAB indices")
  return v


def load_att_splits(path):
  """Reads xlsa17 `att_splits.mat`.

  Returns:
    dict with `att` [K, I] float64 (rows L2-normalised as shipped), `original_att` [K, I],
    `class_names` (K str), 0-based int64 `trainval_loc`, `test_seen_loc`, `test_unseen_loc` and
    `train_loc`/`val_loc` (None when absent, as in many CUB copies).
  """
  mat = _loadmat(path, "att_splits.mat")
  _require(mat, ("att", "original_att", "allclasses_names") + _SPLIT_KEYS, path, "att_splits.mat")
  att = np.asarray(mat["att"], np.float64).T  # [K, I]
  original = np.asarray(mat["original_att"], np.float64).T
  names = _cellstr(mat["allclasses_names"])
  if att.shape != original.shape or len(names) != att.shape[0]:
    raise UserError(f"{path}: att {att.shape[::-1]}, original_att {original.shape[::-1]} and "
                    f"{len(names)} class names disagree; re-download the xlsa17 att_splits.mat")
  out = {"att": att, "original_att": original, "class_names": names}
  for key in _SPLIT_KEYS + ("train_loc", "val_loc"):
    out[key] = _loc(mat, key) if key in mat else None
  return out


def load_res101(path):
  """Reads the per-image part of xlsa17 `res101.mat` (not the 2048 x N pooled features).

  Returns:
    dict with `labels` int64 [N] (0-based class index in allclasses order) and `image_files`
    (N stored paths from the authors' machines).
  """
  mat = _loadmat(path, "res101.mat", variable_names=["labels", "image_files"])
  _require(mat, ("labels", "image_files"), path, "res101.mat")
  labels = np.asarray(mat["labels"]).astype(np.int64).ravel() - 1
  files = _cellstr(mat["image_files"])
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


# ----------------------------------------------------------------------------------------------
# DAZLE hdf5 files.


def _open_hdf5(path):
  import h5py  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise UserError(f"feature file {path} not found; run `python -m zsl_jax.tools.extract_features` "
                    f"or pass the DAZLE feature_map_ResNet_101_<DS>.hdf5")
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise UserError(f"{path} is not a readable hdf5 file ({e}); re-extract it") from e


def _decode_strings(values):
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def load_dazle_hdf5_meta(path):
  """Reads everything but `feature_map` from a DAZLE hdf5 (small arrays, 0-based).

  Returns:
    dict with `labels`, the three split arrays, `att`, `original_att`, `w2v_att` (or None),
    `feature_shape` (F, h, w) and, when present (files written by zsl_jax), `class_names`,
    `attribute_names`, `train_loc`, `val_loc`.
  """
  with _open_hdf5(path) as f:
    missing = [k for k in _HDF5_KEYS if k not in f]
    if missing:
      raise UserError(f"{path} lacks {', '.join(missing)}; it is not a DAZLE feature file (expected keys "
                      f"{', '.join(_HDF5_KEYS)}); re-extract it with zsl_jax.tools.extract_features")
    if "_done" in f:
      n_left = int(f["_done"].size - np.count_nonzero(f["_done"][()]))
      raise UserError(f"{path} is an unfinished extraction ({n_left} images left); re-run "
                      f"zsl_jax.tools.extract_features with the same arguments to finish it")
    out = {k: np.asarray(f[k][()]) for k in _HDF5_KEYS if k != "feature_map"}
    for k in ("labels",) + _SPLIT_KEYS:
      out[k] = out[k].astype(np.int64).ravel()
    out["w2v_att"] = np.asarray(f["w2v_att"][()]) if "w2v_att" in f else None
    out["feature_shape"] = tuple(f["feature_map"].shape[1:])
    out["num_images"] = int(f["feature_map"].shape[0])
    for k in ("train_loc", "val_loc"):
      out[k] = np.asarray(f[k][()]).astype(np.int64) if k in f else None
    for k in ("class_names", "attribute_names"):
      out[k] = _decode_strings(f[k][()]) if k in f else None
  if out["labels"].size != out["num_images"]:
    raise UserError(f"{path}: {out['labels'].size} labels for {out['num_images']} feature maps; re-extract it")
  return out


class RegionFeatureSource:
  """grain random-access source over a DAZLE hdf5: {'features' [R, F], 'label', 'index'}.

  `feature_map` rows are [F, h, w]; they are returned regions-major ([h*w, F], float32) as the
  models consume them, optionally L2-normalised per region (DAZLE's `normalize_F`; all-zero
  regions, e.g. SUN's undecodable images, stay zero). The file is opened lazily once per process (grain workers fork or spawn,
  and h5py handles must not cross processes), so instances pickle cheaply.
  """

  def __init__(self, path, labels, *, in_memory=False, normalize=False, key="feature_map"):
    self.path = os.fspath(path)
    self.key = key
    self.normalize = normalize
    self.labels = np.asarray(labels, np.int32)
    self._file = None
    self._pid = None
    self._memory = None
    with _open_hdf5(self.path) as f:
      shape = f[key].shape
    if shape[0] != self.labels.size:
      raise UserError(f"{path}: {shape[0]} feature maps but {self.labels.size} labels; the feature file "
                      f"and the label file belong to different datasets")
    self.feature_dim = int(shape[1])
    self.num_regions = int(np.prod(shape[2:]))
    if in_memory:  # One sequential read; [N, F, h, w] -> [N, R, F].
      raw = np.asarray(self._dataset()[()], np.float32).reshape(len(self), self.feature_dim, self.num_regions)
      self._memory = self._post(np.ascontiguousarray(raw.transpose(0, 2, 1)))
      self._file.close()
      self._file = None

  def __len__(self):
    return int(self.labels.size)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_file"] = state["_pid"] = None
    return state

  def _dataset(self):
    if self._file is None or self._pid != os.getpid():
      import h5py  # pylint: disable=import-outside-toplevel
      self._file = h5py.File(self.path, "r")
      self._pid = os.getpid()
    return self._file[self.key]

  def _post(self, feats):  # [..., R, F]
    if self.normalize:
      feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
    return feats

  def get_batch(self, indices):
    """Features of many rows at once: int array [B] -> float32 [B, R, F] (any order, repeats ok)."""
    indices = np.asarray(indices, np.int64)
    if self._memory is not None:
      return self._memory[indices]
    order = np.argsort(indices, kind="stable")
    uniq, inverse = np.unique(indices[order], return_inverse=True)
    if uniq.size and uniq[-1] - uniq[0] + 1 == uniq.size:  # Contiguous rows: a slice reads much faster.
      rows = self._dataset()[int(uniq[0]):int(uniq[-1]) + 1]
    elif uniq.size:
      rows = self._dataset()[uniq]
    else:
      rows = np.zeros((0, self.feature_dim, self.num_regions), np.float32)
    rows = np.asarray(rows, np.float32).reshape(uniq.size, self.feature_dim, self.num_regions)
    out = np.empty((indices.size, self.num_regions, self.feature_dim), np.float32)
    out[order] = rows[inverse].transpose(0, 2, 1)
    return self._post(out)

  def __getitem__(self, index):
    index = int(index)
    if self._memory is not None:
      feats = self._memory[index]
    else:
      feats = self._post(np.asarray(self._dataset()[index], np.float32).reshape(self.feature_dim, -1).T)  # [R, F]
    return {"features": np.ascontiguousarray(feats), "label": self.labels[index], "index": np.int32(index)}


class SubsetSource:
  """Rows `indices` of a random-access source, as its own random-access source (one split)."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self):
    return int(self.indices.size)

  def __getitem__(self, i):
    return self.source[self.indices[i]]


# ----------------------------------------------------------------------------------------------
# Validation split (dazle_vsmr.md §9.1).


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


# ----------------------------------------------------------------------------------------------
# The dataset object.


def _l2_rows(x):
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norm, 1e-12)


@dataclasses.dataclass
class ZSLDataset:
  """Everything DAZLE/VSMR need about one benchmark; all indices 0-based rows of the features.

  Per-image fields (`labels`, `features`, seen/unseen classes, validation split) are None when
  only class-level data (att_splits.mat alone) was given.
  """
  name: str
  class_names: list
  attribute_names: list
  att: np.ndarray  # [K, I] float32, rows L2-normalised
  original_att: np.ndarray  # [K, I] float32
  w2v: np.ndarray | None  # [I, D] float32
  trainval: np.ndarray
  test_seen: np.ndarray
  test_unseen: np.ndarray
  labels: np.ndarray | None = None  # [N] int32
  seen_classes: np.ndarray | None = None
  unseen_classes: np.ndarray | None = None
  train: np.ndarray | None = None
  val_seen: np.ndarray | None = None
  val_unseen: np.ndarray | None = None
  val_classes: np.ndarray | None = None
  features: RegionFeatureSource | None = None
  split_source: str = ""

  @property
  def num_classes(self):
    return int(self.att.shape[0])

  @property
  def num_attributes(self):
    return int(self.att.shape[1])

  def split(self, name):
    """Index array of a split: trainval, test_seen, test_unseen, train, val_seen, val_unseen."""
    if name not in ("trainval", "test_seen", "test_unseen", "train", "val_seen", "val_unseen"):
      raise UserError(f"unknown split {name!r}; use trainval, test_seen, test_unseen, train, val_seen or val_unseen")
    value = getattr(self, name)
    if value is None:
      raise UserError(f"split {name!r} needs per-image labels; load res101.mat or a DAZLE hdf5 as well")
    return value

  def source(self, split):
    """grain random-access source of one split's feature rows."""
    if self.features is None:
      raise UserError(f"{self.name} was loaded without region features; pass the DAZLE hdf5 feature file")
    return SubsetSource(self.features, self.split(split))

  def summary(self):
    """One line of counts, logged by trainers so runs state what they trained on."""
    parts = [f"{self.name}: {self.num_classes} classes x {self.num_attributes} attributes",
             f"trainval/test_seen/test_unseen {self.trainval.size}/{self.test_seen.size}/{self.test_unseen.size}"]
    if self.seen_classes is not None:
      parts.append(f"{self.seen_classes.size} seen / {self.unseen_classes.size} unseen classes")
    if self.val_classes is not None:
      parts.append(f"validation ({self.split_source}): train {self.train.size}, val_seen {self.val_seen.size}, "
                   f"val_unseen {self.val_unseen.size} from {self.val_classes.size} classes")
    if self.features is not None:
      parts.append(f"features [{self.features.num_regions}, {self.features.feature_dim}] per image")
    return "; ".join(parts)


def _load_w2v(w2v, num_attributes, what):
  if w2v is None:
    return None
  if isinstance(w2v, (str, os.PathLike)):
    from zsl_jax.projects.attr.data import word_vectors  # pylint: disable=import-outside-toplevel
    w2v = word_vectors.load_vector_array(w2v)
  w2v = np.asarray(w2v, np.float32)
  if w2v.ndim != 2 or w2v.shape[0] != num_attributes:
    raise UserError(f"{what} has shape {w2v.shape} but the attribute matrix has {num_attributes} attributes; "
                    f"use the word vectors built for this dataset's attribute names")
  return w2v


def check_locs(name, n, locs):
  """UserError when a split index points past the N images (split and image files of different datasets)."""
  for key, v in locs.items():
    if v is not None and v.size and v.max() >= n:
      raise UserError(f"{name}: {key} indexes image {v.max()} but there are only {n} images; the split file "
                      f"and the per-image file belong to different datasets")


def load_zsl_dataset(name, *, att_splits=None, res101=None, hdf5=None, w2v=None, attribute_names=None,
                     in_memory=False, normalize_features=False, clip_negative_att=False, val_seed=0,
                     val_seen_fraction=0.2, val_class_fraction=None):
  """Builds a `ZSLDataset` from xlsa17 files and/or a DAZLE hdf5.

  Args:
    name: AWA2, CUB or SUN.
    att_splits: path of xlsa17 `att_splits.mat` (class attributes, names, split locs).
    res101: path of xlsa17 `res101.mat` (per-image labels), optional when `hdf5` is given.
    hdf5: DAZLE-layout feature file; alone it is enough (its att, locs, labels and w2v_att are used).
    w2v: [I, D] array or a path (.pkl/.npy) overriding the hdf5's `w2v_att`.
    attribute_names: list or a names file (`*_new_des.csv`, predicates.txt, attributes.txt/.mat).
    in_memory: load all region features into RAM (CUB and the demo fit; AWA2 is ~15 GB).
    normalize_features: L2-normalise each region vector (DAZLE's normalize_F).
    clip_negative_att: zero negative attribute entries before the row normalisation, as DAZLE's
      AWA2 loader does (AWA2's att has 4 small negative entries from -1 "unknown" values).
    val_seed, val_seen_fraction, val_class_fraction: the validation split (`validation_split`).
  """
  name = check_dataset_name(name)
  if att_splits is None and hdf5 is None:
    raise UserError(f"{name}: pass att_splits.mat (xlsa17) or a DAZLE hdf5 feature file")
  meta = load_dazle_hdf5_meta(hdf5) if hdf5 is not None else None
  if att_splits is not None:
    splits = load_att_splits(att_splits)
  else:
    k = meta["att"].shape[0]
    splits = {"att": meta["att"], "original_att": meta["original_att"],
              "class_names": meta["class_names"] or [f"class_{c:03d}" for c in range(k)],
              "train_loc": meta["train_loc"], "val_loc": meta["val_loc"]}
    splits.update({key: meta[key] for key in _SPLIT_KEYS})
  if meta is not None and att_splits is not None:
    for key in ("att",) + _SPLIT_KEYS:
      a, b = np.asarray(meta[key]), np.asarray(splits[key])
      if a.shape != b.shape or not np.allclose(a, b, atol=1e-6):
        raise UserError(f"{hdf5} and {att_splits} disagree on {key}; they belong to different datasets or splits")
  att = np.asarray(splits["att"], np.float64)
  num_attributes = att.shape[1]

  labels = None
  if res101 is not None:
    labels = load_res101(res101)["labels"]
    if meta is not None and not np.array_equal(labels, meta["labels"]):
      raise UserError(f"{hdf5} and {res101} disagree on the image labels; they belong to different datasets")
  elif meta is not None:
    labels = meta["labels"]
  if labels is not None:
    check_locs(name, labels.size, {k: splits[k] for k in _SPLIT_KEYS + ("train_loc", "val_loc")})
    if labels.max() >= att.shape[0]:
      raise UserError(f"{name}: label {labels.max()} exceeds the {att.shape[0]} classes of the attribute matrix")

  if w2v is None and meta is not None and meta["w2v_att"] is not None:
    w2v_arr = _load_w2v(meta["w2v_att"], num_attributes, f"{hdf5} w2v_att")
  else:
    w2v_arr = _load_w2v(w2v, num_attributes, f"word vectors {w2v if isinstance(w2v, (str, os.PathLike)) else ''}")

  if attribute_names is None and meta is not None:
    attribute_names = meta["attribute_names"]
  if isinstance(attribute_names, (str, os.PathLike)):
    from zsl_jax.projects.attr.data import word_vectors  # pylint: disable=import-outside-toplevel
    attribute_names = word_vectors.read_attribute_names(attribute_names, name)
  if attribute_names is None:
    attribute_names = [f"attribute_{i:03d}" for i in range(num_attributes)]
  if len(attribute_names) != num_attributes:
    raise UserError(f"{len(attribute_names)} attribute names for {num_attributes} attributes; use the "
                    f"names file of {name}")

  ds = ZSLDataset(
      name=name, class_names=list(splits["class_names"]), attribute_names=list(attribute_names),
      att=_l2_rows(np.maximum(att, 0.0) if clip_negative_att else att).astype(np.float32), original_att=np.asarray(splits["original_att"], np.float32),
      w2v=w2v_arr, trainval=splits["trainval_loc"], test_seen=splits["test_seen_loc"],
      test_unseen=splits["test_unseen_loc"])
  if labels is not None:
    ds.labels = labels.astype(np.int32)
    ds.seen_classes = np.unique(labels[ds.trainval])
    ds.unseen_classes = np.unique(labels[ds.test_unseen])
    val = validation_split(ds.trainval, labels, train_loc=splits["train_loc"], val_loc=splits["val_loc"],
                           dataset=name, seed=val_seed, val_seen_fraction=val_seen_fraction,
                           val_class_fraction=val_class_fraction)
    ds.train, ds.val_seen, ds.val_unseen, ds.val_classes = val["train"], val["val_seen"], val["val_unseen"], val[
        "val_classes"]
    ds.split_source = val["source"]
  if hdf5 is not None:
    ds.features = RegionFeatureSource(hdf5, ds.labels, in_memory=in_memory, normalize=normalize_features)
  logging.info("%s", ds.summary())
  return ds
