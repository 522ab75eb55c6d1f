"""ArrayRecord packs of an image index's files, for images on network filesystems.

Opening millions of small JPEGs over NFS/GCS-fuse is latency-bound; a few large ArrayRecord files
read at disk speed. `python -m zsl_jax.tools.array_record --index IDX --out DIR --select SPLIT[:CLASSES]
...` packs the files of the selected images (instance split, class split) as raw bytes, one pack
folder per run; a later run into the same DIR adds only the images not packed yet (and resumes an
interrupted pack shard by shard), so one DIR grows to cover a recipe's training split and every
test set it evaluates.

With `data.images="array_record"` and `data.array_record=DIR`, the HGR trainer reads through a
`PackedIndex`: the image index still gives rows, labels and splits (samplers and evaluators do not
change) and only `read(row)` serves the bytes from the packs. `LoadImage` decodes bytes and paths
alike, so batches are bit-identical to reading the folders; a file unreadable at packing time is
stored empty and skipped like a corrupt one.

DIR/pack-NNN/: rows.npy (sorted index rows; record i holds row rows[i]), shard-SSSSS.array_record,
and pack.json, written last (a folder without it is unfinished and ignored).
"""
import concurrent.futures
import hashlib
import json
import logging
import os
import pathlib

from array_record.python import array_record_data_source
from array_record.python import array_record_module
import numpy as np
import tqdm

from zsl_jax import cli
from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.data import imagenet21k

PACK_FORMAT = "zsl_jax.array_record_pack.v1"
TOOL = "python -m zsl_jax.tools.array_record"
IMAGE_SOURCES = ("folder", "array_record")  # data.images: where `open_images` reads image bytes from
RECORDS_PER_SHARD = 10_000  # ~1 GB of ImageNet JPEGs per file.
READ_CHUNK = 256  # Files read concurrently, then written in order: bounded memory.

logger = logging.getLogger(__name__)


def index_fingerprint(index):
  """sha1 of what maps an index row to a file (names, offsets, labels, roots, WNIDs); packs must match it."""
  h = hashlib.sha1(json.dumps([index.meta["hierarchy_wnids"], index.meta["root_names"]]).encode())
  for name in ("names.bin", "offsets.npy", "labels.npy", "roots.npy"):
    with open(index.directory / name, "rb") as f:
      h.update(hashlib.file_digest(f, "sha1").digest())
  return h.hexdigest()


def parse_selection(text):
  """'test:rest' -> ('test', 'rest'); 'train' -> ('train', None), every class."""
  split, _, classes = str(text).partition(":")
  if not split:
    raise UserError(f"--select {text!r}: write SPLIT or SPLIT:CLASSES, e.g. train:train or test:rest")
  return split, classes or None


def command(index_dir, out_dir, selections):
  """The packing command line for `selections` ((split, classes) pairs)."""
  sel = " ".join(f"--select {s}:{c}" if c else f"--select {s}" for s, c in selections)
  return f"{TOOL} --index {index_dir} --out {out_dir} {sel}"


def needed_selections(config):
  """(split, classes) pairs a run reads: the training images (mode=train) and every evaluator's test set."""
  out = [(config.data.train_split, config.data.train_classes)] if config.mode == "train" else []
  for e in config.evals.values():
    if "split" in e and "classes" in e:
      out.append((e.split, e.classes))
  return list(dict.fromkeys(out))


def _finished_packs(records_dir):
  """[(folder, pack.json dict)] of the finished packs under `records_dir`, in name order."""
  d = pathlib.Path(records_dir)
  out = []
  for p in sorted(d.glob("pack-*")) if d.is_dir() else []:
    if (p / "pack.json").is_file():
      meta = json.loads((p / "pack.json").read_text())
      if meta.get("format") != PACK_FORMAT:
        raise UserError(f"{p} is not a zsl_jax ArrayRecord pack; pack into another folder with {TOOL}")
      out.append((p, meta))
  return out


def _covered(pack_rows, rows):
  """bool [len(rows)]: which rows some pack holds (each pack's rows are sorted)."""
  hit = np.zeros(len(rows), bool)
  for held in pack_rows:
    if len(held):
      pos = np.minimum(np.searchsorted(held, rows), len(held) - 1)
      hit |= np.asarray(held)[pos] == rows
  return hit


def open_images(index, data_config, selections):
  """`index` itself (data.images="folder") or its `PackedIndex`, checked to hold `selections`."""
  kind = data_config.get("images", "folder")
  if kind == "folder":
    return index
  if kind != "array_record":
    raise UserError(f"data.images={kind!r}; use 'folder' or 'array_record'")
  if not data_config.get("array_record"):
    raise UserError(f"data.images='array_record' needs --config.data.array_record=<folder written by {TOOL}>")
  packed = PackedIndex(index.directory, data_config.array_record)
  packed.check(selections)
  return packed


class PackedIndex(imagenet21k.ImageIndex):
  """An `ImageIndex` whose `read(row)` returns the file's bytes from the packs in `records`.

  Pickles as two folder names (grain workers reopen the memory maps and readers lazily).
  """

  def __init__(self, directory, records):
    super().__init__(directory)
    self.records = pathlib.Path(records)
    self._packs = _finished_packs(self.records)
    self._pack_rows = None
    self._source = None

  def __getstate__(self):
    return {"directory": self.directory, "records": self.records}

  def __setstate__(self, state):
    self.__init__(state["directory"], state["records"])

  @property
  def pack_rows(self):
    if self._pack_rows is None:
      self._pack_rows = [np.load(p / "rows.npy", mmap_mode="r") for p, _ in self._packs]
    return self._pack_rows

  @property
  def source(self):
    """One random-access source over every shard of every pack (record ids in pack order)."""
    if self._source is None:
      shards = [f"{p / s}[0:{n}]" for p, m in self._packs for s, n in m["shards"]]
      self._source = array_record_data_source.ArrayRecordDataSource(shards)
    return self._source

  def check(self, selections):
    """UserError naming the command that fixes it unless the packs hold every image of `selections`."""
    if not self._packs:
      raise UserError(f"no ArrayRecord packs in {self.records}; write them with: "
                      f"{command(self.directory, self.records, selections)}")
    fingerprint = index_fingerprint(self)
    for p, meta in self._packs:
      if meta["index_fingerprint"] != fingerprint:
        raise UserError(f"{p} was packed from another image index than {self.directory}; pack this one into a "
                        f"new folder: {command(self.directory, '<new folder>', selections)}")
    missing = [(s, c) for s, c in selections if not _covered(self.pack_rows, self.rows(s, c)).all()]
    if missing:
      what = ", ".join(f"split {s!r} / classes {c!r}" for s, c in missing)
      raise UserError(f"the ArrayRecord packs in {self.records} lack images of {what}; add them with: "
                      f"{command(self.directory, self.records, missing)}")

  def record_id(self, row):
    """Global record id of index row `row`, or -1 when no pack holds it."""
    start = 0
    for held in self.pack_rows:
      i = int(np.searchsorted(held, row))
      if i < len(held) and int(held[i]) == row:
        return start + i
      start += len(held)
    return -1

  def read(self, row):
    """(encoded bytes, label, file path for logs) of `row`."""
    rid = self.record_id(int(row))
    if rid < 0:
      raise UserError(f"image row {row} ({self.path(row)}) is in no pack under {self.records}; add its split "
                      f"with {TOOL} --out {self.records}")
    return self.source[rid], self.label(row), self.path(row)


def _read_file(path):
  try:
    return pathlib.Path(path).read_bytes()
  except OSError as e:
    logger.warning("packing %s as empty (skipped like a corrupt image): %s", path, e)
    return b""


def _pack_folder(out_dir, rows):
  """The unfinished pack with exactly these rows (resumed), else a new pack-NNN folder after the last."""
  taken = sorted(out_dir.glob("pack-*"))
  for p in taken:
    if not (p / "pack.json").exists() and (p / "rows.npy").exists():
      try:
        if np.array_equal(np.load(p / "rows.npy"), rows):
          return p
      except (OSError, ValueError):
        continue
  k = 1 + max((int(p.name.split("-")[1]) for p in taken if p.name.split("-")[1].isdigit()), default=-1)
  p = out_dir / f"pack-{k:03d}"
  p.mkdir(parents=True)
  np.save(p / "rows.npy", rows)
  return p


def _write_shard(index, rows, path, pool):
  """Reads the files of `rows` concurrently and writes them in order; renamed into place when complete."""
  tmp = path.with_name(path.name + ".tmp")
  writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
  try:
    for lo in range(0, len(rows), READ_CHUNK):
      for data in pool.map(_read_file, [index.path(r) for r in rows[lo:lo + READ_CHUNK]]):
        writer.write(data)
  finally:
    writer.close()
  os.replace(tmp, path)


def pack(index, selections, out_dir, *, threads=16, records_per_shard=RECORDS_PER_SHARD):
  """Packs the images of `selections` that no pack in `out_dir` holds yet; returns how many it packed."""
  out_dir = pathlib.Path(out_dir)
  if not selections:
    raise UserError("nothing selected; pass --select SPLIT[:CLASSES] once per selection, e.g. --select test:rest")
  fingerprint = index_fingerprint(index)
  packs = _finished_packs(out_dir)
  for _, meta in packs:
    if meta["index_fingerprint"] != fingerprint:
      raise UserError(f"{out_dir} holds packs of another image index ({meta['index']}); choose another --out")
  rows = np.unique(np.concatenate([index.rows(s, c) for s, c in selections]))
  rows = rows[~_covered([np.load(p / "rows.npy", mmap_mode="r") for p, _ in packs], rows)]
  if not len(rows):
    return 0
  folder = _pack_folder(out_dir, rows)
  shards = []
  with concurrent.futures.ThreadPoolExecutor(threads) as pool, tqdm.tqdm(total=len(rows), desc=folder.name) as bar:
    for j, lo in enumerate(range(0, len(rows), records_per_shard)):
      part = rows[lo:lo + records_per_shard]
      name = f"shard-{j:05d}.array_record"
      if not (folder / name).exists():  # Shards of an interrupted run are kept.
        _write_shard(index, part, folder / name, pool)
      shards.append((name, int(len(part))))
      bar.update(len(part))
  meta = {"format": PACK_FORMAT, "index": str(index.directory.resolve()), "index_fingerprint": fingerprint,
          "selections": [list(s) for s in selections], "num_records": int(len(rows)), "shards": shards}
  (folder / "pack.json.tmp").write_text(json.dumps(meta, indent=1))
  os.replace(folder / "pack.json.tmp", folder / "pack.json")
  return int(len(rows))


def main(argv=None):
  """python -m zsl_jax.tools.array_record --index IDX --out DIR --select train:train --select test:rest"""
  ap = cli.ArgumentParser("array_record", description=__doc__)
  ap.add_argument("--index", required=True, help="image index directory written by zsl_jax.tools.make_splits")
  ap.add_argument("--out", required=True, help="records folder (--config.data.array_record); packs are added to it")
  ap.add_argument("--select", action="append", default=[], metavar="SPLIT[:CLASSES]",
                  help="instance split and optional class split to pack, repeated: train:train test:rest ...")
  ap.add_argument("--threads", type=int, default=16, help="files read concurrently (default 16)")
  args = ap.parse_args(argv)
  try:
    paths.check_writable_dir(args.out, "--out")
    index = imagenet21k.ImageIndex(args.index)
    n = pack(index, [parse_selection(s) for s in args.select], args.out, threads=args.threads)
  except UserError as e:
    cli.report("array_record", e)
    return cli.EXIT_USER_ERROR
  except KeyboardInterrupt:
    cli.report("array_record", f"interrupted; finished packs in {args.out} are kept, re-run the same command to go on")
    return cli.EXIT_INTERRUPTED
  print(f"packed {n:,} images into {args.out}" if n else f"{args.out} already holds every selected image")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
