"""DAZLE's region-feature files (`feature_map_ResNet_101_<DS>.hdf5`) and grain sources over them.

The hdf5 holds `feature_map` [N, F, h, w] plus small arrays (labels, split locs, att, w2v_att), all
0-based and classes-major. AWA2's file is ~15 GB, so `RegionFeatureSource` reads rows through h5py
on demand; CUB and the demo fit in RAM with `in_memory=True`.
"""
import os

import h5py
import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import xlsa17

_HDF5_KEYS = ("feature_map", "labels") + xlsa17.SPLIT_KEYS + ("att", "original_att")


def _open_hdf5(path):
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
    for k in ("labels",) + xlsa17.SPLIT_KEYS:
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
  regions, e.g. SUN's undecodable images, stay zero). The file is opened lazily once per process
  (grain workers fork or spawn, and h5py handles must not cross processes), so instances pickle cheaply.
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
