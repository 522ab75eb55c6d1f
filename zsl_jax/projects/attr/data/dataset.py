"""One `ZSLDataset` from whatever files a user has: xlsa17 `.mat` files and/or a DAZLE hdf5.

Users arrive with the files of Xian et al.'s proposed split ("xlsa17": `att_splits.mat`,
`res101.mat`) and/or DAZLE's region-feature files (`feature_map_ResNet_101_<DS>.hdf5`). This
module checks that they agree and assembles what the DAZLE/VSMR trainers consume: class-level data
(attributes, names, split index arrays, seen/unseen classes, a validation split) and a grain
random-access source of region features. Everything is 0-based, classes-major.
"""
import dataclasses
import logging
import os

import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import feature_store
from zsl_jax.projects.attr.data import region_features
from zsl_jax.projects.attr.data import validation
from zsl_jax.projects.attr.data import word_vectors
from zsl_jax.projects.attr.data import xlsa17

logger = logging.getLogger(__name__)

SPLITS = ("trainval", "test_seen", "test_unseen", "train", "val_seen", "val_unseen")


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
  features: region_features.RegionFeatureSource | None = None
  split_source: str = ""

  @property
  def num_classes(self):
    return int(self.att.shape[0])

  @property
  def num_attributes(self):
    return int(self.att.shape[1])

  def split(self, name):
    """Index array of a split: trainval, test_seen, test_unseen, train, val_seen, val_unseen."""
    if name not in SPLITS:
      raise UserError(f"unknown split {name!r}; use {', '.join(SPLITS[:-1])} or {SPLITS[-1]}")
    value = getattr(self, name)
    if value is None:
      raise UserError(f"split {name!r} needs per-image labels; load res101.mat or a DAZLE hdf5 as well")
    return value

  def source(self, split):
    """grain random-access source of one split's feature rows."""
    if self.features is None:
      raise UserError(f"{self.name} was loaded without region features; pass the DAZLE hdf5 feature file")
    return region_features.SubsetSource(self.features, self.split(split))

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
    w2v = word_vectors.load_vector_array(w2v)
  w2v = np.asarray(w2v, np.float32)
  if w2v.ndim != 2 or w2v.shape[0] != num_attributes:
    raise UserError(f"{what} has shape {w2v.shape} but the attribute matrix has {num_attributes} attributes; "
                    f"use the word vectors built for this dataset's attribute names")
  return w2v


def _class_data(att_splits, hdf5, meta):
  """att, original_att, class_names and the split locs, from att_splits.mat when given, else the hdf5."""
  if att_splits is None:
    k = meta["att"].shape[0]
    splits = {"att": meta["att"], "original_att": meta["original_att"],
              "class_names": meta["class_names"] or [f"class_{c:03d}" for c in range(k)],
              "train_loc": meta["train_loc"], "val_loc": meta["val_loc"]}
    splits.update({key: meta[key] for key in xlsa17.SPLIT_KEYS})
    return splits
  splits = xlsa17.load_att_splits(att_splits)
  if meta is not None:
    for key in ("att",) + xlsa17.SPLIT_KEYS:
      a, b = np.asarray(meta[key]), np.asarray(splits[key])
      if a.shape != b.shape or not np.allclose(a, b, atol=1e-6):
        raise UserError(f"{hdf5} and {att_splits} disagree on {key}; they belong to different datasets or splits")
  return splits


def _image_labels(name, res101, hdf5, meta, splits):
  """0-based labels [N] from res101.mat or the hdf5 (None when neither is given), checked against the splits."""
  labels = None
  if res101 is not None:
    labels = xlsa17.load_res101(res101)["labels"]
    if meta is not None and not np.array_equal(labels, meta["labels"]):
      raise UserError(f"{hdf5} and {res101} disagree on the image labels; they belong to different datasets")
  elif meta is not None:
    labels = meta["labels"]
  if labels is not None:
    xlsa17.check_locs(name, labels.size, {k: splits[k] for k in xlsa17.SPLIT_KEYS + ("train_loc", "val_loc")})
    num_classes = splits["att"].shape[0]
    if labels.max() >= num_classes:
      raise UserError(f"{name}: label {labels.max()} exceeds the {num_classes} classes of the attribute matrix")
  return labels


def _attribute_names(name, attribute_names, meta, num_attributes):
  if attribute_names is None and meta is not None:
    attribute_names = meta["attribute_names"]
  if isinstance(attribute_names, (str, os.PathLike)):
    attribute_names = word_vectors.read_attribute_names(attribute_names, name)
  if attribute_names is None:
    attribute_names = [f"attribute_{i:03d}" for i in range(num_attributes)]
  if len(attribute_names) != num_attributes:
    raise UserError(f"{len(attribute_names)} attribute names for {num_attributes} attributes; use the "
                    f"names file of {name}")
  return list(attribute_names)


def _add_image_splits(ds, labels, splits, **validation_args):
  """Per-image fields: labels, seen/unseen classes and the validation split inside trainval."""
  ds.labels = labels.astype(np.int32)
  ds.seen_classes = np.unique(labels[ds.trainval])
  ds.unseen_classes = np.unique(labels[ds.test_unseen])
  val = validation.validation_split(ds.trainval, labels, train_loc=splits["train_loc"], val_loc=splits["val_loc"],
                                    dataset=ds.name, **validation_args)
  ds.train, ds.val_seen, ds.val_unseen, ds.val_classes = (val[k] for k in ("train", "val_seen", "val_unseen",
                                                                           "val_classes"))
  ds.split_source = val["source"]


def load_zsl_dataset(name, *, att_splits=None, res101=None, hdf5=None, w2v=None, attribute_names=None,
                     in_memory=False, normalize_features=False, clip_negative_att=False, val_seed=0,
                     val_seen_fraction=0.2, val_class_fraction=None, memory_budget=feature_store.MEMORY_BUDGET,
                     features_npy=None):
  """Builds a `ZSLDataset` from xlsa17 files and/or a DAZLE hdf5.

  Args:
    name: AWA2, CUB or SUN.
    att_splits: path of xlsa17 `att_splits.mat` (class attributes, names, split locs).
    res101: path of xlsa17 `res101.mat` (per-image labels), optional when `hdf5` is given.
    hdf5: DAZLE-layout feature file; alone it is enough (its att, locs, labels and w2v_att are used).
    w2v: [I, D] array or a path (.pkl/.npy) overriding the hdf5's `w2v_att`.
    attribute_names: list or a names file (`*_new_des.csv`, predicates.txt, attributes.txt/.mat).
    in_memory: True: all region features in host memory; False: read chunk-aware (or memory-mapped with
      `features_npy`); None: in memory when they fit `memory_budget` x the available memory
      (`feature_store`; AWA2 is ~15 GB, CUB ~4.7 GB).
    normalize_features: L2-normalise each region vector (DAZLE's normalize_F).
    clip_negative_att: zero negative attribute entries before the row normalisation, as DAZLE's
      AWA2 loader does (AWA2's att has 4 small negative entries from -1 "unknown" values).
    val_seed, val_seen_fraction, val_class_fraction: the validation split (`validation.validation_split`).
    memory_budget: fraction of the available memory features may fill (automatic mode, block caches).
    features_npy: the hdf5's conversion by `python -m zsl_jax.tools.convert_features`, memory-mapped.
  """
  name = xlsa17.check_dataset_name(name)
  if att_splits is None and hdf5 is None:
    raise UserError(f"{name}: pass att_splits.mat (xlsa17) or a DAZLE hdf5 feature file")
  meta = region_features.load_dazle_hdf5_meta(hdf5) if hdf5 is not None else None
  splits = _class_data(att_splits, hdf5, meta)
  att = np.asarray(splits["att"], np.float64)
  num_attributes = att.shape[1]
  labels = _image_labels(name, res101, hdf5, meta, splits)
  if w2v is None and meta is not None and meta["w2v_att"] is not None:
    w2v_arr = _load_w2v(meta["w2v_att"], num_attributes, f"{hdf5} w2v_att")
  else:
    w2v_arr = _load_w2v(w2v, num_attributes, f"word vectors {w2v if isinstance(w2v, (str, os.PathLike)) else ''}")
  ds = ZSLDataset(
      name=name, class_names=list(splits["class_names"]),
      attribute_names=_attribute_names(name, attribute_names, meta, num_attributes),
      att=_l2_rows(np.maximum(att, 0.0) if clip_negative_att else att).astype(np.float32),
      original_att=np.asarray(splits["original_att"], np.float32), w2v=w2v_arr, trainval=splits["trainval_loc"],
      test_seen=splits["test_seen_loc"], test_unseen=splits["test_unseen_loc"])
  if labels is not None:
    _add_image_splits(ds, labels, splits, seed=val_seed, val_seen_fraction=val_seen_fraction,
                      val_class_fraction=val_class_fraction)
  if hdf5 is not None:
    ds.features = region_features.RegionFeatureSource(hdf5, ds.labels, in_memory=in_memory,
                                                      normalize=normalize_features, memory_budget=memory_budget,
                                                      npy=features_npy)
  logger.info("%s", ds.summary())
  return ds
