"""DAZLE's region-feature files (`feature_map_ResNet_101_<DS>.hdf5`) and grain sources over them.

The hdf5 holds `feature_map` [N, F, h, w] plus small arrays (labels, split locs, att, w2v_att), all
0-based and classes-major. AWA2's file is ~15 GB inflated; `RegionFeatureSource` holds it in host
memory when it fits and otherwise reads it chunk-aware (`feature_store`, `hdf5_rows`).
"""
import logging
import os
import time

import h5py
import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import feature_store
from zsl_jax.projects.attr.data import hdf5_rows
from zsl_jax.projects.attr.data import xlsa17

logger = logging.getLogger(__name__)

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
  regions, e.g. SUN's undecodable images, stay zero). Where the rows live (`feature_store`): in host
  memory when `in_memory` is True, or when it is None (automatic) and they fit `memory_budget` x the
  available memory; otherwise read chunk-aware through a block cache; or memory-mapped from `npy`, the
  file's conversion (`python -m zsl_jax.tools.convert_features`). Every mode returns the same values.
  Instances pickle cheaply (files reopen per process) except in memory, where the array travels.
  """

  def __init__(self, path, labels, *, in_memory=False, normalize=False, key="feature_map",
               memory_budget=feature_store.MEMORY_BUDGET, npy=None, threads=None):
    self.path = os.fspath(path)
    self.key = key
    self.normalize = normalize
    self.labels = np.asarray(labels, np.int32)
    _open_hdf5(self.path).close()
    reader = hdf5_rows.Hdf5Rows(self.path, key, threads=threads)
    if reader.num_rows != self.labels.size:
      raise UserError(f"{path}: {reader.num_rows} feature maps but {self.labels.size} labels; the feature file "
                      f"and the label file belong to different datasets")
    self.feature_dim, self.num_regions, self.block_rows = reader.feature_dim, reader.num_regions, reader.block_rows
    nbytes = reader.num_rows * reader.row_bytes
    name = os.path.basename(self.path)
    shape = f"[{reader.num_rows}, {self.num_regions}, {self.feature_dim}]"
    if npy:
      feature_store.check_converted(npy, (reader.num_rows, self.num_regions, self.feature_dim),
                                    feature_store.fingerprint(self.path, key))
    if npy and not in_memory:  # The page cache already keeps what fits: no second copy.
      memory, why = False, "converted layout" + ("" if in_memory is None else "; config.data.in_memory=False")
    else:
      memory, why = feature_store.choose_in_memory(nbytes, in_memory, memory_budget)
    if memory:
      start = time.perf_counter()
      array = np.load(npy) if npy else feature_store.load_all(reader, normalize)
      if npy and normalize:
        feature_store.l2_normalize_(array)
      self.store = feature_store.MemoryStore(array)
      self.mode = "memory"
      logger.info("features %s %s: in host memory (%s); read in %.1f s", name, shape, why,
                  time.perf_counter() - start)
    elif npy:
      self.store, self.mode = feature_store.MemmapStore(npy, normalize), "memmap"
      logger.info("features %s %s: memory-mapped from %s (%s)", name, shape, npy, why)
    else:
      self.store = feature_store.CachedStore(reader, feature_store.budget_bytes(memory_budget), normalize)
      self.mode = "chunked"
      logger.info("features %s %s: chunk-aware, %s (%s); for reads without inflation convert once with "
                  "`python -m zsl_jax.tools.convert_features --hdf5 %s`", name, shape, self.store.describe(), why,
                  self.path)

  def __len__(self):
    return int(self.labels.size)

  def get_batch(self, indices):
    """Features of many rows at once: int array [B] -> float32 [B, R, F] (any order, repeats ok)."""
    return self.store.gather(np.asarray(indices, np.int64))

  def __getitem__(self, index):
    index = int(index)
    feats = self.store.row(index)  # [R, F]
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
