"""Class splits (21K-D, 21K-P, 2/3-hop) and seeded instance splits over image folders.

The reference's split scripts hard-code cluster paths, draw validation images with an unseeded
`random.sample` and write per-class JSON lists of 13M absolute paths. Here the class splits are
set intersections in the reference's order, and the instance splits are one columnar index of
every (file, class) pair plus a bit mask per row saying which splits contain it; every random
choice is drawn from a generator seeded by (seed, protocol, WNID), so it does not depend on the
class order, the number of classes or the machine. Layout of the index directory:

  meta.json      roots, hierarchy WNIDs (label = hierarchy index), split bits, seed, counts
  names.bin      file names (relative to <root>/<wnid>/), UTF-8, concatenated
  offsets.npy    int64 [M + 1]: name i is names.bin[offsets[i]:offsets[i + 1]]
  labels.npy     int32 [M]: class index in the hierarchy's node order
  roots.npy      uint8 [M]: which image root (ilsvrc_train, ilsvrc_val, imagenet21k)
  splits.npy     uint16 [M]: bit b set <=> row belongs to split SPLIT_BITS[b]
  duplicates.json  groups of byte-identical images (only with dedup 'report' or 'drop'; `dedup.py`)
"""
import concurrent.futures
import importlib.util
import json
import logging
import os
import pathlib

import numpy as np
from tqdm import tqdm

from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import dedup as dedup_lib

logger = logging.getLogger(__name__)

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp")
ROOTS = ("ilsvrc_train", "ilsvrc_val", "imagenet21k")
LOW_SHOTS = (1, 2, 3, 5, 10)
# Seen classes use ILSVRC-2012 (train / val); unseen classes use their ImageNet-21K folder.
SPLIT_BITS = ("train", "val", "test") + tuple(f"ls{k}_train" for k in LOW_SHOTS) + ("ls_val", "ls_test")
SPLIT_HELP = {
    "train": "seen: ILSVRC train; unseen: all images not in `val` (reference train_split)",
    "val": "seen: ILSVRC val; unseen: up to N_VAL random images per class (ZSL validation)",
    "test": "seen: ILSVRC val; unseen: every image (ZSL test)",
    "ls{k}_train": "seen: ILSVRC train; unseen: k of the 10 reserved images per class (nested in k)",
    "ls_val": "seen: ILSVRC val; unseen: up to N_VAL random images of the non-reserved ones",
    "ls_test": "seen: ILSVRC val; unseen: every non-reserved image",
}
N_VAL = 50
N_RESERVED = 10
INDEX_FORMAT = "zsl_jax.image_index/1"
DEDUP_MODES = ("off", "report", "drop")


# ----------------------------------------------------------------------------- class splits


def read_wnid_list(path):
  """One WNID per line (blank lines and '#' comments ignored), or a JSON list."""
  try:
    text = pathlib.Path(path).read_text()
  except OSError as e:
    raise UserError(f"cannot read class list {path}: {e}; pass an existing file") from e
  if text.lstrip().startswith("["):
    return list(json.loads(text))
  return [line.split()[0] for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_testsets(path):
  """The DGP/GCNZ `imagenet-testsets.json` (keys train, all, 2-hops, 3-hops, ...)."""
  try:
    data = json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}; pass DGP's imagenet-testsets.json") from e
  if "train" not in data or "all" not in data:
    raise UserError(f"{path} lacks the 'train'/'all' keys of DGP's imagenet-testsets.json")
  return data


TIMM_LISTS = {  # What ships in timm/data/_info/ (pip install --no-deps timm).
    "fall2011": "imagenet22k_synsets.txt",           # the 21,841 classes of the fall-2011 release
    "p_fall2011": "imagenet21k_miil_synsets.txt",    # ImageNet-21K-P, fall-2011 version (11,221)
    "p_winter2021": "imagenet21k_miil_w21_synsets.txt",  # ImageNet-21K-P, winter-2021 version (10,450)
}


def timm_class_list(name):
  """Path of a WNID list inside the timm wheel (`TIMM_LISTS` key; timm is not imported)."""
  spec = importlib.util.find_spec("timm")
  path = spec and (pathlib.Path(spec.submodule_search_locations[0]) / "data" / "_info" / TIMM_LISTS[name])
  if not path or not path.is_file():
    raise UserError(f"the {name} class list was not found; `pip install --no-deps timm` (it ships "
                    f"timm/data/_info/{TIMM_LISTS[name]}) or pass the list as a file")
  return path


def timm_21kp_list():
  """Path of the ImageNet-21K-P winter-2021 WNID list inside the timm wheel."""
  return timm_class_list("p_winter2021")


def class_splits(graph_nodes, testsets, winter21, p_list=None, warn=True):
  """The reference's class splits, each in its source list's order.

  train/rest/all: DGP `train`/`all` ∩ graph ∩ winter-2021 (all = train + rest); hop2/hop3/
  hop3_pure: the DGP hop lists ∩ graph ∩ winter-2021; p_train/p_rest/p_all: ∩ the 21K-P list.
  `warn`: log a warning per DGP list with WNIDs left out (the manifest tool counts them itself).
  """
  ok = set(graph_nodes) & set(winter21)
  pick = lambda key: [w for w in dict.fromkeys(testsets.get(key, [])) if w in ok]
  if warn:
    _warn_left_out(testsets, set(graph_nodes), set(winter21))
  out = {"train": pick("train"), "rest": pick("all")}
  seen = set(out["train"])
  out["rest"] = [w for w in out["rest"] if w not in seen]
  out["all"] = out["train"] + out["rest"]
  for key, name in (("2-hops", "hop2"), ("3-hops", "hop3"), ("3-hops-pure", "hop3_pure")):
    if key in testsets:
      out[name] = pick(key)
  if p_list is not None:
    p = set(p_list)
    out["p_train"] = [w for w in out["train"] if w in p]
    out["p_rest"] = [w for w in out["rest"] if w in p]
    out["p_all"] = out["p_train"] + out["p_rest"]
  return out


def _warn_left_out(testsets, graph_nodes, winter21):
  """A warning with counts for each class list whose WNIDs are not all in the graph and the winter-2021 release."""
  for key in ("train", "all", "2-hops", "3-hops", "3-hops-pure"):
    listed = list(dict.fromkeys(testsets.get(key, [])))
    no_graph = [w for w in listed if w not in graph_nodes]
    no_w21 = [w for w in listed if w in graph_nodes and w not in winter21]
    if no_graph or no_w21:
      logger.warning("class list %r: %d of %d WNIDs left out (%d not in the hierarchy graph, %d not in the "
                     "winter-2021 release), e.g. %s", key, len(no_graph) + len(no_w21), len(listed), len(no_graph),
                     len(no_w21), ", ".join((no_graph + no_w21)[:5]))


def split_counts(splits):
  return {k: len(v) for k, v in splits.items() if isinstance(v, list)}


# ----------------------------------------------------------------------------- folder scanning


def _list_dir(path):
  """(sorted image file names, number of other visible files) of a class folder; None when there is no folder."""
  try:
    with os.scandir(path) as it:
      files = [e.name for e in it if not e.name.startswith(".") and e.is_file()]
  except FileNotFoundError:
    return None
  images = sorted(n for n in files if n.lower().endswith(IMAGE_EXTS))
  return images, len(files) - len(images)


def scan_class_dirs(root, wnids, workers=32, desc=None):
  """{wnid: sorted image file names} for `root/<wnid>/`, listed by parallel scandir threads.

  Network filesystems are latency-bound, so many directories are listed at once. Missing
  class directories map to None.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise UserError(f"image root {root} is not a directory; pass the folder holding <wnid>/ subfolders")
  out = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    futures = {pool.submit(_list_dir, root / w): w for w in wnids}
    for f in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc=desc or f"scan {root}",
                  unit="class", disable=not wnids, mininterval=1.0):
      out[futures[f]] = f.result()
  other = sum(out[w][1] for w in wnids if out[w] is not None)
  if other:
    logger.warning("%s: %d files without an image extension (%s) are not indexed", root, other, " ".join(IMAGE_EXTS))
  return {w: None if out[w] is None else out[w][0] for w in wnids}


# ----------------------------------------------------------------------------- instance splits


def _rng(seed, protocol, wnid):
  return np.random.default_rng([int(seed), protocol, int(wnid[1:])])


def _bit(name):
  return np.uint16(1 << SPLIT_BITS.index(name))


def build_index(out_dir, hierarchy, splits, roots, seed=0, workers=32, overwrite=False, dedup="off"):
  """Scans the image folders and writes the index directory (see the module docstring).

  Args:
    out_dir: new directory for the index.
    hierarchy: `graph.Hierarchy`; labels are its node indices.
    splits: class splits from `class_splits` (uses train and rest).
    roots: {'ilsvrc_train': dir, 'ilsvrc_val': dir, 'imagenet21k': dir}, each `<wnid>/*.JPEG`.
    seed: drives every random choice (validation images, reserved low-shot images).
    dedup: 'off'; 'report' hashes every image and writes duplicates.json (`dedup.py`); 'drop' also
      leaves all copies but the first of each group of identical images out of the index.
  Returns:
    the meta dict (also in meta.json), with per-split image and class counts.
  """
  out_dir = pathlib.Path(out_dir)
  if (out_dir / "meta.json").exists() and not overwrite:
    raise UserError(f"{out_dir} already holds an index; choose another --out or pass --overwrite")
  if dedup not in DEDUP_MODES:
    raise UserError(f"unknown dedup mode {dedup!r}; choose one of {', '.join(DEDUP_MODES)}")
  missing_roots = [k for k in ROOTS if k not in roots]
  if missing_roots:
    raise UserError(f"image roots {missing_roots} not given; pass --ilsvrc_train, --ilsvrc_val and --imagenet21k")
  seen, unseen = list(splits["train"]), list(splits["rest"])
  labels_of = {w: int(i) for w, i in zip(seen + unseen, hierarchy.indices(seen + unseen))}
  tr, va, un, missing, empty = _scan_roots(roots, seen, unseen, workers)
  dup = None if dedup == "off" else _dedup(roots, {"ilsvrc_train": tr, "ilsvrc_val": va, "imagenet21k": un},
                                          dedup, workers)
  out_dir.mkdir(parents=True, exist_ok=True)
  if dup is not None:
    (out_dir / "duplicates.json").write_text(json.dumps(dup, indent=1))
  labels, masks = _write_columns(out_dir, _class_rows(seen, unseen, tr, va, un, seed), labels_of)
  counts = _count_splits(labels, masks, sorted(set(labels_of[w] for w in seen)), splits, hierarchy)
  meta = {
      "format": INDEX_FORMAT, "seed": int(seed), "roots": {k: str(pathlib.Path(roots[k]).resolve()) for k in ROOTS},
      "root_names": list(ROOTS), "split_bits": list(SPLIT_BITS), "n_val": N_VAL, "n_reserved": N_RESERVED,
      "hierarchy_wnids": list(hierarchy.wnids), "class_splits": splits, "num_images": int(len(labels)),
      "missing_class_dirs": missing, "empty_class_dirs": empty, "hierarchy_stats": hierarchy.stats(),
      "counts": counts, "dedup": None if dup is None else {"mode": dedup, **dup["counts"]},
  }
  (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
  return meta


def _dedup(roots, listings, mode, workers):
  """Hashes the listed images; with mode 'drop' removes the extra copies from `listings` (in place)."""
  report = dedup_lib.find_duplicates({k: str(v) for k, v in roots.items()}, listings, workers)
  if mode == "drop":
    report["counts"]["dropped"] = dedup_lib.drop(report, listings)
  return report


def _scan_roots(roots, seen, unseen, workers):
  """Lists the class folders: (ILSVRC train, ILSVRC val, ImageNet-21K scans, missing and empty class dirs per root).

  Classes without images are counted in a warning: they get no rows (a seen class without train images
  is never trained on, an unseen one without images never tested).
  """
  tr = scan_class_dirs(roots["ilsvrc_train"], seen, workers, "scan ILSVRC train")
  va = scan_class_dirs(roots["ilsvrc_val"], seen, workers, "scan ILSVRC val")
  un = scan_class_dirs(roots["imagenet21k"], unseen, workers, "scan ImageNet-21K")
  missing = {"ilsvrc_train": [w for w in seen if tr[w] is None], "ilsvrc_val": [w for w in seen if va[w] is None],
             "imagenet21k": [w for w in unseen if un[w] is None]}
  empty = {}
  for key, scans, wnids in (("ilsvrc_train", tr, seen), ("ilsvrc_val", va, seen), ("imagenet21k", un, unseen)):
    empty[key] = [w for w in wnids if scans[w] is not None and not scans[w]]
    if missing[key] or empty[key]:
      logger.warning("%s %s: %d of %d classes have no images (%d without a folder, %d with no image file), e.g. %s; "
                     "they get no rows from it (listed in the index's meta.json)", key, roots[key],
                     len(missing[key]) + len(empty[key]), len(wnids), len(missing[key]), len(empty[key]),
                     ", ".join((missing[key] + empty[key])[:5]))
  empty_val = [w for w in seen if not va[w]]
  if seen and len(empty_val) == len(seen):
    raise UserError(f"no ILSVRC val class folders under {roots['ilsvrc_val']}; the val images must sit in "
                    "<wnid>/ folders (move them with the devkit's ground truth, e.g. valprep.sh)")
  return tr, va, un, missing, empty


def _unseen_bits(n, seed, wnid):
  """Split bits [n] of an unseen class's sorted images: ZSL train/val/test and the nested low-shot splits."""
  m = np.full(n, _bit("test"), np.uint16)
  zsl_val = _rng(seed, 0, wnid).permutation(n)[:N_VAL]  # All images when n <= N_VAL, as the reference.
  m[zsl_val] |= _bit("val")
  m[np.setdiff1d(np.arange(n), zsl_val)] |= _bit("train")
  order = _rng(seed, 1, wnid).permutation(n)
  reserved, remainder = order[:N_RESERVED], order[N_RESERVED:]
  for k in LOW_SHOTS:
    m[reserved[:k]] |= _bit(f"ls{k}_train")
  m[remainder] |= _bit("ls_test")
  m[remainder[:N_VAL]] |= _bit("ls_val")
  return m


def _class_rows(seen, unseen, tr, va, un, seed):
  """Yields (files, wnid, root key, split bits [n]) per class folder in index order.

  Pops each folder listing from the scans as it goes, so a listing is freed once its rows are written.
  """
  seen_train_bits = _bit("train") | np.uint16(sum(int(_bit(f"ls{k}_train")) for k in LOW_SHOTS))
  seen_val_bits = _bit("val") | _bit("test") | _bit("ls_val") | _bit("ls_test")
  for w in seen:
    files = tr.pop(w) or []
    yield files, w, "ilsvrc_train", np.full(len(files), seen_train_bits, np.uint16)
    files = va.pop(w) or []
    yield files, w, "ilsvrc_val", np.full(len(files), seen_val_bits, np.uint16)
  for w in unseen:
    files = un.pop(w) or []
    yield files, w, "imagenet21k", _unseen_bits(len(files), seed, w)


def _write_columns(out_dir, rows, labels_of):
  """Streams names.bin from `rows` and saves offsets/labels/roots/splits.npy; returns (labels [M], masks [M])."""
  lengths, lab, root_id, bits = [], [], [], []
  with open(out_dir / "names.bin", "wb") as names_file:  # Streamed: 13M names never sit in memory as str.
    for files, wnid, root_key, masks in rows:
      encoded = [f.encode("utf-8") for f in files]
      names_file.write(b"".join(encoded))
      lengths.append(np.fromiter((len(e) for e in encoded), np.int64, len(encoded)))
      lab.append(np.full(len(files), labels_of[wnid], np.int32))
      root_id.append(np.full(len(files), ROOTS.index(root_key), np.uint8))
      bits.append(masks)

  cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)
  lengths = cat(lengths, np.int64)
  offsets = np.zeros(len(lengths) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  np.save(out_dir / "offsets.npy", offsets)
  labels = cat(lab, np.int32)
  np.save(out_dir / "labels.npy", labels)
  np.save(out_dir / "roots.npy", cat(root_id, np.uint8))
  masks = cat(bits, np.uint16)
  np.save(out_dir / "splits.npy", masks)
  return labels, masks


def _count_splits(labels, masks, seen_labels, splits, hierarchy):
  """Per instance split: seen/unseen images and classes, plus images of the class-restricted benchmarks."""
  counts = {}
  is_seen = np.isin(labels, seen_labels)
  for name in SPLIT_BITS:
    sel = (masks & _bit(name)) != 0
    counts[name] = {"seen_images": int((sel & is_seen).sum()), "unseen_images": int((sel & ~is_seen).sum()),
                    "seen_classes": int(len(np.unique(labels[sel & is_seen]))),
                    "unseen_classes": int(len(np.unique(labels[sel & ~is_seen])))}
  # Images of the class-restricted benchmarks (21K-P, 2-hop, 3-hop) per instance split.
  for cname in ("p_train", "p_rest", "hop2", "hop3", "hop3_pure"):
    if cname in splits:
      keep = np.isin(labels, hierarchy.indices([w for w in splits[cname] if w in hierarchy.index]))
      counts[f"{cname}_images"] = {name: int((((masks & _bit(name)) != 0) & keep).sum())
                                   for name in ("train", "val", "test")}
  return counts
