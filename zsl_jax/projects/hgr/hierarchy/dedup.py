"""Content-hash de-duplication of the image folders an index is built from.

ImageNet-21K holds byte-identical images under several classes, and some ILSVRC-1K images reappear
in 21K class folders. HGR-Net trains on ILSVRC-1K and tests on the 21K folders of unseen classes, so
such a copy is a test image the model was trained on (train/test leakage), and a copy under two
classes is an image with two labels. `find_duplicates` hashes every file's bytes (BLAKE2b, parallel
threads: reading is the cost, and hashlib releases the GIL while hashing) and groups identical ones;
`drop` removes every copy but the first, in root order ILSVRC train, ILSVRC val, ImageNet-21K, then
index order, so the training copy stays and its test copies go.
"""
import collections
import concurrent.futures
import hashlib
import logging
import os

from tqdm import tqdm

from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)

ROOT_ORDER = ("ilsvrc_train", "ilsvrc_val", "imagenet21k")
KINDS = {  # group kind -> what it means
    "within_class": "two copies in the same class folder",
    "across_classes": "copies under different classes (one image, several labels)",
    "ilsvrc_vs_21k": "an ILSVRC-1K image also in an ImageNet-21K folder (train/test leakage)",
    "ilsvrc_train_vs_val": "an ILSVRC train image also in ILSVRC val",
}


def _digest(path):
  try:
    with open(path, "rb") as f:
      return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
  except OSError as e:
    raise UserError(f"cannot read {path} to hash it ({e}); fix the file or run make_splits without --dedup") from e


def _kinds(files):
  """Kinds (KINDS keys) of one group of identical files [(root key, wnid, name)]."""
  kinds, wnids, roots = [], [w for _, w, _ in files], {r for r, _, _ in files}
  if len(set(zip([r for r, _, _ in files], wnids))) < len(files):
    kinds.append("within_class")
  if len(set(wnids)) > 1:
    kinds.append("across_classes")
  if "imagenet21k" in roots and roots & {"ilsvrc_train", "ilsvrc_val"}:
    kinds.append("ilsvrc_vs_21k")
  if {"ilsvrc_train", "ilsvrc_val"} <= roots:
    kinds.append("ilsvrc_train_vs_val")
  return kinds


def find_duplicates(roots, listings, workers=32):
  """Groups of byte-identical images across the listed folders.

  Args:
    roots: {root key: folder}. listings: {root key: {wnid: [file names] or None}} (the folder scans).
    workers: parallel reader threads.
  Returns:
    the report dict: files hashed, bytes, duplicate groups (files in keep-first order, kinds) and counts.
  """
  entries = [(r, w, n) for r in ROOT_ORDER if r in listings for w, names in listings[r].items() for n in names or ()]
  paths = [os.path.join(roots[r], w, n) for r, w, n in entries]
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    digests = list(tqdm(pool.map(_digest, paths), total=len(paths), desc="hash images", unit="img",
                        disable=not paths, mininterval=1.0))
  by = collections.defaultdict(list)
  for e, d in zip(entries, digests):
    by[d].append(e)
  groups = [{"blake2b": d, "files": [list(f) for f in fs], "kinds": _kinds(fs)} for d, fs in by.items() if len(fs) > 1]
  counts = {"files_hashed": len(paths), "bytes_hashed": int(sum(os.path.getsize(p) for p in paths)),
            "groups": len(groups), "duplicate_files": sum(len(g["files"]) - 1 for g in groups)}
  for k in KINDS:
    counts[f"{k}_groups"] = sum(k in g["kinds"] for g in groups)
  return {"counts": counts, "kinds": KINDS, "groups": groups}


def drop(report, listings):
  """Removes all copies but the first of each group from `listings` (in place); returns the number removed."""
  gone = collections.defaultdict(set)
  for g in report["groups"]:
    for r, w, n in g["files"][1:]:
      gone[(r, w)].add(n)
  for (r, w), names in gone.items():
    listings[r][w] = [n for n in listings[r][w] if n not in names]
  return sum(len(v) for v in gone.values())


def summary(counts):
  """One console line per kind, for make_splits' report."""
  lines = [f"dedup: {counts['files_hashed']:,} images hashed ({counts['bytes_hashed'] / 2**30:.2f} GiB); "
           f"{counts['groups']:,} groups of identical images, {counts['duplicate_files']:,} extra copies"
           + (f", {counts['dropped']:,} dropped from the index" if "dropped" in counts else "")]
  lines += [f"  {counts[k + '_groups']:>8,} groups: {v}" for k, v in KINDS.items()]
  return "\n".join(lines)
