"""Optional TFDS ArrayRecord copy of an index split, for network filesystems.

Opening millions of small JPEGs over NFS/GCS-fuse is latency-bound; a few large ArrayRecord
files of encoded JPEG bytes read sequentially and randomly at disk speed. The builder packs
one (instance split, class split) selection of an image index, in index order (TFDS shuffling
disabled, so record i is row i of the selection), and saves the labels beside it so that the
batchers can group by class without reading every record. `RecordImages` then stands in for
`ImageIndex` everywhere (`batchers.train_iterator`, `imagenet21k.eval_dataset`); decoding is
the same robust `LoadImage` step. No TensorFlow needed.
"""
import json
import pathlib

import numpy as np

from zsl_jax.errors import UserError

NAME = "imagenet21k_index"


def _builder_class():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class Imagenet21kIndex(tfds.core.GeneratorBasedBuilder):
    """Encoded JPEG bytes + hierarchy label + source path, one TFDS split per build."""
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, index=None, rows=None, split_name="train", **kwargs):
      self._index, self._rows, self._split_name = index, rows, split_name
      super().__init__(**kwargs)

    def _info(self):
      return self.dataset_info_from_configs(
          features=tfds.features.FeaturesDict({"jpeg": tfds.features.Tensor(shape=(), dtype=np.object_),
                                               "label": tfds.features.Tensor(shape=(), dtype=np.int32),
                                               "path": tfds.features.Text()}),
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {self._split_name: self._generate_examples()}

    def _generate_examples(self):
      for i, row in enumerate(self._rows):
        path = self._index.path(row)
        try:
          data = pathlib.Path(path).read_bytes()
        except OSError:
          data = b""  # Stored anyway (decoded as corrupt later) so record i stays row i.
        yield i, {"jpeg": data, "label": self._index.label(row), "path": path}

  return Imagenet21kIndex


def build(index, split, classes, out_dir):
  """Writes the selection `index.rows(split, classes)` as TFDS ArrayRecord under `out_dir`.

  Returns the `RecordImages` reader. `classes` is a class split name (e.g. 'rest') or None.
  """
  out_dir = pathlib.Path(out_dir)
  if (out_dir / "zsl_records.json").exists():
    raise UserError(f"{out_dir} already holds records; choose another output directory")
  rows = index.rows(split, classes)
  builder = _builder_class()(index=index, rows=rows, split_name=split, data_dir=str(out_dir / "tfds"),
                             file_format="array_record")
  builder.download_and_prepare()
  np.save(out_dir / "labels.npy", index.labels(rows))
  meta = {"tfds_dir": str(pathlib.Path(builder.data_dir).resolve()), "split": split, "classes": classes,
          "class_splits": index.meta["class_splits"], "hierarchy_wnids": index.meta["hierarchy_wnids"],
          "num_records": int(len(rows))}
  (out_dir / "zsl_records.json").write_text(json.dumps(meta))
  return RecordImages(out_dir)


class RecordImages:
  """Index-like reader over built records: rows(), labels(), read() for `LoadImage`."""

  def __init__(self, directory):
    self.directory = pathlib.Path(directory)
    try:
      self.meta = json.loads((self.directory / "zsl_records.json").read_text())
    except (OSError, ValueError) as e:
      raise UserError(f"no zsl_jax records in {directory} ({e}); build them with zsl_jax.projects.hgr.data.array_record.build") from e
    self._labels = np.load(self.directory / "labels.npy", mmap_mode="r")
    self._source = None

  def __getstate__(self):
    return {"directory": self.directory}

  def __setstate__(self, state):
    self.__init__(state["directory"])

  @property
  def source(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
      self._source = tfds.builder_from_directory(self.meta["tfds_dir"]).as_data_source(split=self.meta["split"])
    return self._source

  def __len__(self):
    return int(self.meta["num_records"])

  def class_list(self, name):
    if name not in self.meta["class_splits"]:
      raise UserError(f"unknown class split {name!r}; choose one of {sorted(self.meta['class_splits'])}")
    return self.meta["class_splits"][name]

  def rows(self, split, classes=None):
    """Record ids of the stored selection, optionally narrowed to a class split or WNID list."""
    if split != self.meta["split"]:
      raise UserError(f"these records hold split {self.meta['split']!r}, not {split!r}; build records for it")
    labels = np.asarray(self._labels)
    sel = np.ones(len(labels), bool)
    if classes is not None and classes != self.meta["classes"]:
      wnids = self.class_list(classes) if isinstance(classes, str) else classes
      index = {w: i for i, w in enumerate(self.meta["hierarchy_wnids"])}
      keep = np.zeros(len(index), bool)
      keep[[index[w] for w in wnids if w in index]] = True
      sel = keep[labels]
    return np.flatnonzero(sel).astype(np.int64)

  def labels(self, rows):
    return np.asarray(self._labels[rows], np.int32)

  def label(self, row):
    return int(self._labels[row])

  def read(self, row):
    """(encoded bytes, label, source path) of record `row`."""
    rec = self.source[int(row)]
    path = rec["path"].decode("utf-8", "replace") if isinstance(rec["path"], bytes) else str(rec["path"])
    return rec["jpeg"], int(rec["label"]), path


def main(argv=None):
  """python -m zsl_jax.tools.array_record --index IDX --split test --classes rest --out DIR"""
  import argparse  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from zsl_jax.projects.hgr.data import array_record  # pylint: disable=import-outside-toplevel,import-self
  from zsl_jax.projects.hgr.data import imagenet21k  # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--index", required=True, help="image index directory written by zsl_jax.tools.make_splits")
  ap.add_argument("--split", required=True, help="instance split to pack (train, val, test, ls5_train, ...)")
  ap.add_argument("--classes", default=None, help="class split to keep (train, rest, p_rest, hop2, ...); default all")
  ap.add_argument("--out", required=True, help="new output directory (TFDS data under OUT/tfds)")
  args = ap.parse_args(argv)
  try:
    # The builder class must live in the package module, not __main__ (a TFDS requirement).
    rec = array_record.build(imagenet21k.ImageIndex(args.index), args.split, args.classes, args.out)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {len(rec):,} records to {rec.meta['tfds_dir']}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
