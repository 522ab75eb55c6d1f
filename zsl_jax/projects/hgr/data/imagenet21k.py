"""ImageNet-21K image index, grain sources and the robust decode + CLIP preprocess step.

The index (written by `zsl_jax.tools.make_splits`, layout in `zsl_jax.projects.hgr.hierarchy.splits`) is a
few memory-mapped numpy columns, so a 13M-image split opens in milliseconds and pickles to grain
worker processes as a directory name. Decoding never crashes a run: corrupt or truncated files
become masked examples (`_mask` False, `_skipped` True), each logged once per process, and
CMYK/greyscale/PNG-behind-.JPEG files are converted and logged once.
"""
import dataclasses
import json
import logging
import math
import pathlib

import grain
import numpy as np

from zsl_jax.data import images
from zsl_jax.data import pipeline
from zsl_jax.data import transforms
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import splits as splits_lib

logger = logging.getLogger(__name__)

_LOGGED = set()  # Per process: files already reported.


def _log_once(key, msg, *args):
  if key not in _LOGGED:
    _LOGGED.add(key)
    logger.warning(msg, *args)


class ImageIndex:
  """Read-only view of an index directory: row -> (path, label); split -> rows.

  `array_record.PackedIndex` is this index with `read` serving the bytes from ArrayRecord packs.
  """

  def __init__(self, directory):
    self.directory = pathlib.Path(directory)
    try:
      self.meta = json.loads((self.directory / "meta.json").read_text())
    except (OSError, ValueError) as e:
      raise UserError(f"no image index in {directory} ({e}); build it with python -m zsl_jax.tools.make_splits") from e
    if self.meta.get("format") != splits_lib.INDEX_FORMAT:
      raise UserError(f"{directory} is not a zsl_jax image index; rebuild it with python -m zsl_jax.tools.make_splits")
    self._roots = [pathlib.Path(self.meta["roots"][k]) for k in self.meta["root_names"]]
    self._wnids = self.meta["hierarchy_wnids"]
    self._cols = None

  def __getstate__(self):  # Workers reopen the memory maps instead of receiving copies.
    return {"directory": self.directory}

  def __setstate__(self, state):
    self.__init__(state["directory"])

  @property
  def cols(self):
    if self._cols is None:
      d = self.directory
      empty = not (d / "names.bin").stat().st_size  # np.memmap cannot map an empty file.
      self._cols = {
          "names": np.zeros(0, np.uint8) if empty else np.memmap(d / "names.bin", np.uint8, "r"),
          "offsets": np.load(d / "offsets.npy", mmap_mode="r"),
          "labels": np.load(d / "labels.npy", mmap_mode="r"),
          "roots": np.load(d / "roots.npy", mmap_mode="r"),
          "splits": np.load(d / "splits.npy", mmap_mode="r"),
      }
    return self._cols

  def __len__(self):
    return int(self.meta["num_images"])

  def relocate(self, **roots):
    """Points root names (ilsvrc_train=..., imagenet21k=...) at new folders, e.g. another mount."""
    for k, v in roots.items():
      self._roots[self.meta["root_names"].index(k)] = pathlib.Path(v)
    return self

  def path(self, row):
    c = self.cols
    lo, hi = int(c["offsets"][row]), int(c["offsets"][row + 1])
    name = bytes(c["names"][lo:hi]).decode("utf-8")
    return str(self._roots[int(c["roots"][row])] / self._wnids[int(c["labels"][row])] / name)

  def label(self, row):
    return int(self.cols["labels"][row])

  def read(self, row):
    """(what `decode_rgb` opens: the path here, bytes in `PackedIndex`; label; name for logs) of `row`."""
    path = self.path(row)
    return path, self.label(row), path

  def labels(self, rows):
    return np.asarray(self.cols["labels"][rows], np.int32)

  def check_hierarchy(self, hierarchy):
    """UserError unless labels index `hierarchy` (the same WNIDs in the same order)."""
    if list(hierarchy.wnids) != self._wnids:
      raise UserError(f"the image index {self.directory} was built for another hierarchy; rebuild it with "
                      "make_splits using this hierarchy file")

  def class_list(self, name):
    """WNIDs of a class split stored with the index (train, rest, all, hop2, p_rest, ...)."""
    cs = self.meta["class_splits"]
    if name not in cs:
      raise UserError(f"unknown class split {name!r}; choose one of {sorted(cs)}")
    return cs[name]

  def rows(self, split, classes=None):
    """int64 row ids of instance split `split`, restricted to a class split name or WNID list."""
    if split not in self.meta["split_bits"]:
      raise UserError(f"unknown instance split {split!r}; choose one of {self.meta['split_bits']}")
    bit = np.uint16(1 << self.meta["split_bits"].index(split))
    sel = (np.asarray(self.cols["splits"]) & bit) != 0
    if classes is not None:
      wnids = self.class_list(classes) if isinstance(classes, str) else classes
      index = {w: i for i, w in enumerate(self._wnids)}
      keep = np.zeros(len(self._wnids), bool)
      keep[[index[w] for w in wnids if w in index]] = True
      sel &= keep[np.asarray(self.cols["labels"])]
    return np.flatnonzero(sel).astype(np.int64)


@dataclasses.dataclass
class RowSource:
  """grain random-access source: i -> {'row': index row (or -1 = padding)}."""
  rows: np.ndarray

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return {"row": np.int64(self.rows[i])}


def _preprocess_fn(name, image_size):
  """Decoded -> image array: CLIP as uint8 (the model normalises on device), ImageNet as float32."""
  if name == "clip":
    return lambda d: transforms.clip_pixels(d.image, image_size, d.scale, d.full_size)
  if name == "imagenet":
    return lambda d: transforms.imagenet_preprocess(d.image, image_size, image_size)
  raise UserError(f"unknown preprocessing {name!r}; choose 'clip' or 'imagenet'")


class LoadImage(grain.transforms.Map):
  """{'row'} -> {'image' [S, S, 3], 'label' int32, '_mask', '_skipped'} via `index.read(row)`.

  CLIP images are uint8 (a quarter of float32's host->device bytes; `CLIP.encode_image` normalises
  them on device), ImageNet-preprocessed ones float32. `draft=True` decodes large CLIP JPEGs at a
  reduced DCT scale (`images.decode`; tolerance in `zsl_jax.data.transforms`); False is bit-exact
  with torchvision. Rows < 0 are padding (`_mask` False). Undecodable files give a zero image,
  `_mask` False and `_skipped` True; they are logged once per process.
  """

  def __init__(self, index=None, image_size=224, preprocess="clip", draft=True):
    self.index = index
    self.image_size = image_size
    self.preprocess = preprocess
    self.draft = draft
    self._fn = None

  def __getstate__(self):
    return {"index": self.index, "image_size": self.image_size, "preprocess": self.preprocess, "draft": self.draft}

  def __setstate__(self, state):
    self.__init__(**state)

  def map(self, element):
    if self._fn is None:
      self._fn = _preprocess_fn(self.preprocess, self.image_size)
    s = self.image_size
    dtype = np.uint8 if self.preprocess == "clip" else np.float32
    row = int(element.get("row", 0))
    out = {"image": np.zeros((s, s, 3), dtype), "label": np.int32(0), pipeline.MASK_KEY: np.bool_(False),
           "_skipped": np.bool_(False)}
    if row < 0:
      return out
    source, label, where = self.index.read(row)
    out["label"] = np.int32(label)
    min_short = s if self.draft and self.preprocess == "clip" else None
    try:
      decoded = images.decode(source, min_short)
    except (images.CorruptImageError, FileNotFoundError) as e:
      _log_once(where, "skipping undecodable image %s: %s", where, e)
      out["_skipped"] = np.bool_(True)
      return out
    if decoded.kind is not None:
      _log_once(where, "converted %s image %s to RGB", decoded.kind, where)
    out["image"] = self._fn(decoded)
    out[pipeline.MASK_KEY] = np.bool_(True)
    return out


def reference_loader_rows(rows, labels, batch_size=512, num_workers=12):
  """The rows the reference test loader actually scores, repeats included.

  The reference serves a class's batches j = 0..nb-1 (nb = ceil(n / 512)) from `num_workers`
  worker copies of per-class iterators; a copy advances only when its worker serves that class,
  so batch j shows chunk j // num_workers of the class's images: classes with <= 12 batches
  score their first 512 images nb times and never the rest. Images keep index (sorted) order,
  where the reference used os.listdir order. For comparison runs only.
  """
  rows, labels = np.asarray(rows), np.asarray(labels)
  out = []
  for c in dict.fromkeys(labels.tolist()):  # Classes in sequence, as the reference.
    r = rows[labels == c]
    for j in range(math.ceil(len(r) / batch_size)):
      k = j // num_workers
      out.append(r[k * batch_size:(k + 1) * batch_size])
  return np.concatenate(out) if out else rows[:0]


def eval_dataset(index, split, classes, global_batch_size, *, image_size=224, preprocess="clip",
                 process_index=None, process_count=None, emulate_reference_loader=False, draft=True):
  """Exact evaluation batches: every image once over all hosts, padded and masked.

  `emulate_reference_loader=True` instead scores the reference's duplicated subset
  (`reference_loader_rows`), to compare with published numbers. `draft` as in `LoadImage`.

  Returns:
    (MapDataset of batches {'image' [b, S, S, 3] (uint8 for CLIP), 'label' [b], '_mask' [b],
    '_skipped' [b]}, number of images). Summing `_skipped` over batches (and hosts) counts
    undecodable files.
  """
  rows = index.rows(split, classes)
  if emulate_reference_loader:
    rows = reference_loader_rows(rows, index.labels(rows))
  ds = grain.MapDataset.source(RowSource(rows)).map(LoadImage(index, image_size, preprocess, draft))
  return pipeline.padded_eval_dataset(ds, global_batch_size, process_index=process_index,
                                      process_count=process_count, zero_on_pad=("_skipped",)), len(rows)


def eval_iterator(batches, *, num_threads=0, prefetch_buffer_size=0, num_workers=0):
  """Iterates `eval_dataset` batches with the training loader's settings (`pipeline.to_iter_dataset`:
  0 = from the core count) and optional grain worker processes."""
  return iter(pipeline.to_iter_dataset(batches, num_threads, prefetch_buffer_size, num_workers))
