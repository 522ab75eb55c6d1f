r"""DAZLE's input path: a full AWA2-shaped schedule reading region features, per file layout and feature mode.

  python benchmarks/dazle_input.py [--scale 1] [--steps 9410] [--threads N] [--dir D] [--keep]
  python benchmarks/dazle_input.py --dry-run          # tiny shapes, seconds (tests/test_feature_store_bench.py)

Files: AWA2's real row structure (xlsa17 `att_splits.mat` from ../shared/data: 37,322 images; trainval
23,527, test_seen 5,882, test_unseen 7,913; labels class-sorted as xlsa17 orders them), every `--scale`-th
row kept when the full 15 GB will not fit (the per-row size [2048, 7, 7] float32 and the chunk layouts stay
as in the full files). Features are half zeros, like post-ReLU maps, so gzip compresses them to ~57 %.
Two hdf5 layouts hold the same values:
  official  DAZLE's extraction (`create_dataset(..., compression="gzip")`): gzip level 4 in h5py's default
            chunks for the full AWA2 shape, (1167, 64, 1, 1): one chunk spans 1,167 images
  zsl_jax   zsl_jax.tools.extract_features: gzip level 1, one image per chunk, (1, 2048, 7, 7)
plus the `.npy` that `python -m zsl_jax.tools.convert_features` makes of the zsl_jax file.

Reading goes through the trainer's path: `load_zsl_dataset` (the feature mode), DAZLE's AWA2 recipe on
trainval (configs/dazle_awa2.py with select_on=test_reference: balanced sampler, batch_size 50 -> 40
classes x 1 image, 9,410 steps) via `samplers.make_sampler`, `samplers.LoadFeatures` and
`sampling.iterator` with N grain threads (prefetch 2N). Each row of the table is one (layout, mode,
sampler); "cache holds split" sizes the chunk-aware cache to the training split's blocks, "cache half"
to half of them. Rows that would take hours run a prefix of the schedule (the steps column says how many)
and the rates are of that prefix (the window sampler's window is one official chunk, 1,167 rows,
its cache two windows). rows/CPU-s is rows per second of process CPU time (all threads), the
figure that holds on a loaded machine; rows/s is per wall second. Setup is the time before the first
step (reading the whole file for the in-memory modes). Files are deleted at the end unless --keep.
"""
import argparse
from concurrent import futures
import gc
import os
import pathlib
import shutil
import sys
import tempfile
import time
import zlib

import h5py
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from zsl_jax.data import sampling  # pylint: disable=wrong-import-position
from zsl_jax.projects.attr.data import dataset  # pylint: disable=wrong-import-position
from zsl_jax.projects.attr.data import feature_store  # pylint: disable=wrong-import-position
from zsl_jax.projects.attr.data import samplers  # pylint: disable=wrong-import-position
from zsl_jax.projects.attr.data import xlsa17  # pylint: disable=wrong-import-position
from zsl_jax.projects.attr.tools import convert_features  # pylint: disable=wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]
AWA2 = dict(rows=37322, trainval=23527, test_seen=5882, test_unseen=7913, classes=50, unseen=10, attributes=85)
SPLITS = REPO.parent / "shared" / "data" / "xlsa17" / "AWA2" / "att_splits.mat"
FULL = dict(feature_shape=(2048, 7, 7), official_chunks=(1167, 64, 1, 1), steps=23527 * 20 // 50)
TINY = dict(feature_shape=(16, 2, 2), official_chunks=(23, 4, 1, 1), steps=60)
BATCH, SEED = 50, 214


def awa2_structure(scale):
  """Labels [n] and 0-based split locs of AWA2's rows, every `scale`-th row kept."""
  if SPLITS.exists():
    locs = {k: v - 1 for k, v in xlsa17.load_att_splits(str(SPLITS)).items() if k in xlsa17.SPLIT_KEYS}
  else:  # Same counts without the real interleaving.
    order = np.random.default_rng(0).permutation(AWA2["rows"])
    cuts = np.cumsum([AWA2["trainval"], AWA2["test_seen"]])
    locs = {k: np.sort(v) for k, v in zip(xlsa17.SPLIT_KEYS, np.split(order, cuts))}
  labels = np.empty(AWA2["rows"], np.int64)
  seen = np.sort(np.concatenate([locs["trainval_loc"], locs["test_seen_loc"]]))
  seen_classes = np.arange(AWA2["classes"] - AWA2["unseen"])
  labels[seen] = seen_classes[np.arange(seen.size) * seen_classes.size // seen.size]  # Class-sorted.
  unseen = locs["test_unseen_loc"]
  labels[unseen] = seen_classes.size + np.arange(unseen.size) * AWA2["unseen"] // unseen.size
  keep = np.arange(0, AWA2["rows"], scale)
  locs = {k: v[v % scale == 0] // scale for k, v in locs.items()}
  return labels[keep], locs


def _meta(f, labels, locs, rng):
  f.create_dataset("labels", data=labels)
  for k, v in locs.items():
    f.create_dataset(k, data=v)
  strength = rng.random((AWA2["classes"], AWA2["attributes"])) * 100
  f.create_dataset("att", data=strength / np.linalg.norm(strength, axis=1, keepdims=True))
  f.create_dataset("original_att", data=strength)
  f.create_dataset("w2v_att", data=rng.standard_normal((AWA2["attributes"], 300)))


def _chunk_grid(shape, chunks):
  """(offset, chunk size) of every chunk over the non-row axes."""
  for index in np.ndindex(*(-(-d // c) for d, c in zip(shape, chunks))):
    yield tuple(i * c for i, c in zip(index, chunks)), chunks


def write_files(folder, labels, locs, feature_shape, official_chunks, threads):
  """official.hdf5 and zsl_jax.hdf5 with the same features, chunks compressed in `threads` threads."""
  n, rng = labels.size, np.random.default_rng(0)
  paths = {"official": folder / "official.hdf5", "zsl_jax": folder / "zsl_jax.hdf5"}
  files = {k: h5py.File(p, "w") for k, p in paths.items()}
  zsl_chunks = (1,) + feature_shape
  dsets = {"official": files["official"].create_dataset("feature_map", (n,) + feature_shape, np.float32,
                                                         chunks=official_chunks, compression="gzip"),
           "zsl_jax": files["zsl_jax"].create_dataset("feature_map", (n,) + feature_shape, np.float32,
                                                       chunks=zsl_chunks, compression="gzip", compression_opts=1)}
  block = official_chunks[0]
  with futures.ThreadPoolExecutor(threads) as pool:
    for start in range(0, n, block):
      x = np.random.default_rng([1, start]).standard_normal((block,) + feature_shape, np.float32)
      np.maximum(x, 0.0, out=x)  # Half zeros, as post-ReLU maps.
      x[n - start:] = 0.0  # Rows past the end pad the last chunk.
      jobs = [(dsets["official"], (start,) + c, x[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(c, size))], 4)
              for c, size in _chunk_grid(feature_shape, official_chunks[1:])]
      jobs += [(dsets["zsl_jax"], (start + i,) + (0,) * len(feature_shape), x[i:i + 1], 1)
               for i in range(min(block, n - start))]
      packed = pool.map(lambda j: (j[0], j[1], zlib.compress(np.ascontiguousarray(j[2]).tobytes(), j[3])), jobs)
      for dset, offset, data in packed:
        dset.id.write_direct_chunk(offset, data)
  for f in files.values():
    _meta(f, labels, locs, rng)
    f.close()
  return paths


def read_schedule(ds, sampler_kind, steps, threads, block_rows, window_rows, max_cpu=float("inf")):
  """Runs `steps` training steps of the input path (fewer past `max_cpu` CPU-s); returns steps, rows, wall s,
  CPU s and the first batch."""
  rows = ds.trainval
  sampler = samplers.make_sampler(sampler_kind, rows, ds.labels[rows], BATCH, SEED, block_rows=block_rows,
                                  window_rows=window_rows)
  load = samplers.LoadFeatures(ds.features, np.arange(AWA2["classes"]))
  it = sampling.iterator(sampler, load, num_threads=threads, prefetch=2 * threads)
  w0, c0 = time.perf_counter(), time.process_time()
  first, count, done = None, 0, 0
  while done < steps and time.process_time() - c0 < max_cpu:
    batch = next(it)
    first = batch["features"][:2].copy() if first is None else first
    count += batch["index"].size
    done += 1
  wall, cpu = time.perf_counter() - w0, time.process_time() - c0
  it.close()  # Stops the read-ahead threads, which hold the feature store.
  return done, count, wall, cpu, first


def copy_ceiling(feature_shape, rows=40, steps=200):
  """Rows/CPU-s of the cheapest possible step input now: one contiguous copy of `rows` rows (the machine's
  memory bandwidth under its current load; a random gather cannot beat it)."""
  source = np.ones((16 * rows,) + feature_shape, np.float32)
  c0 = time.process_time()
  for step in range(steps):
    start = step % 16 * rows
    source[start:start + rows].copy()
  return steps * rows / (time.process_time() - c0)


def split_block_bytes(ds, block_rows):
  """Bytes of the blocks holding the training split's rows (what a cache needs to hold it)."""
  blocks = np.unique(ds.trainval // block_rows).size
  return blocks * block_rows * ds.features.num_regions * ds.features.feature_dim * 4


def cases(paths, npy):
  """(layout, path, mode label, load kwargs, sampler, cache share of the split or None, prefix cap)."""
  out = []
  for layout in ("official", "zsl_jax"):
    out.append((layout, paths[layout], "memory", dict(in_memory=True), "balanced", None, False))
    out.append((layout, paths[layout], "chunk-aware, cache holds split", dict(in_memory=False), "balanced", 1.0,
                False))
    out.append((layout, paths[layout], "chunk-aware, cache half split", dict(in_memory=False), "balanced", 0.5, True))
    out.append((layout, paths[layout], "chunk-aware, window sampler", dict(in_memory=False), "window", 0.0, True))
  out.append(("converted .npy", paths["zsl_jax"], "memmap", dict(in_memory=None, features_npy=npy), "balanced", None,
              False))
  return out


def run_case(case, args, reference):
  layout, path, mode, kwargs, kind, cache_share, prefix = case
  t0 = time.perf_counter()
  probe = dataset.load_zsl_dataset("AWA2", hdf5=str(path), in_memory=False, memory_budget=1 << 30)
  block_rows = probe.features.block_rows
  if cache_share is not None:
    store = probe.features.store
    window_blocks = -(-args.window_rows // block_rows)
    extra = store.scan_bytes + (2 * window_blocks + 2) * store.block_bytes * (cache_share == 0.0)
    kwargs = dict(kwargs, memory_budget=int(split_block_bytes(probe, block_rows) * cache_share) + extra)
  del probe
  ds = dataset.load_zsl_dataset("AWA2", hdf5=str(path), **kwargs)
  setup = time.perf_counter() - t0
  steps, count, wall, cpu, first = read_schedule(ds, kind, min(args.steps, args.prefix_steps) if prefix else args.steps,
                                                args.threads, block_rows, args.window_rows,
                                                args.prefix_cpu if prefix else float("inf"))
  if kind == "balanced":
    if reference:
      np.testing.assert_array_equal(first, reference[0])  # Every mode reads the same rows and values.
    else:
      reference.append(first)
  print(f"{layout:15s} {mode:32s} {kind:9s} {steps:6d} {count / wall:10.0f} {count / cpu:12.0f} {cpu:8.2f} "
        f"{wall:8.2f} {setup:8.2f}", flush=True)
  del ds
  gc.collect()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--scale", type=int, default=None, help="keep every k-th AWA2 row (default: 1 if 40%% of the "
                 "available memory and the free disk hold it, else the smallest k that fits)")
  p.add_argument("--steps", type=int, default=None, help="schedule length (default: the AWA2 recipe's 9,410)")
  p.add_argument("--prefix-steps", type=int, default=300, help="steps of the rows that would take hours ...")
  p.add_argument("--prefix-cpu", type=float, default=60.0, help="... or fewer, once they used this many CPU-s")
  p.add_argument("--window-rows", type=int, default=None, help="window sampler's window (default: one official "
                 "chunk's rows, 1,167)")
  p.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1), help="grain and inflating threads")
  p.add_argument("--dir", default=None, help="where to write the files (default: a temp folder)")
  p.add_argument("--keep", action="store_true", help="keep the files (the folder is printed)")
  p.add_argument("--files", default=None, help="reuse the files a --keep run left in this folder")
  p.add_argument("--only", default="", help="run the table rows whose layout or mode contains this text (or any of "
                 "several, comma-separated)")
  p.add_argument("--dry-run", action="store_true", help="tiny shapes: the same path in seconds")
  args = p.parse_args(argv)
  sizes = TINY if args.dry_run else FULL
  args.steps = args.steps or sizes["steps"]
  args.window_rows = args.window_rows or sizes["official_chunks"][0]
  if args.files:
    return _run(args, sizes, pathlib.Path(args.files))
  folder = pathlib.Path(tempfile.mkdtemp(prefix="dazle_input_", dir=args.dir))
  if args.scale is None:
    row_bytes = int(np.prod(sizes["feature_shape"])) * 4
    room = min(0.4 * feature_store.available_memory(), shutil.disk_usage(folder).free / 2.5)
    args.scale = 40 if args.dry_run else max(1, int(np.ceil(AWA2["rows"] * row_bytes / room)))
  try:
    _write(args, sizes, folder)
    return _run(args, sizes, folder)
  finally:
    if not args.keep:
      shutil.rmtree(folder, ignore_errors=True)


def _write(args, sizes, folder):
  labels, locs = awa2_structure(args.scale)
  print(f"writing AWA2-shaped files: every {args.scale} of {AWA2['rows']:,} rows; in {folder}", flush=True)
  t0 = time.perf_counter()
  paths = write_files(folder, labels, locs, sizes["feature_shape"], sizes["official_chunks"], args.threads)
  sizes_gib = {k: os.path.getsize(v) / 2**30 for k, v in paths.items()}
  print(f"wrote official {sizes_gib['official']:.2f} GiB (chunks {sizes['official_chunks']}, gzip 4), zsl_jax "
        f"{sizes_gib['zsl_jax']:.2f} GiB (chunks {(1,) + sizes['feature_shape']}, gzip 1) in "
        f"{time.perf_counter() - t0:.0f} s", flush=True)
  c0, t0 = time.process_time(), time.perf_counter()
  convert_features.convert(str(paths["zsl_jax"]), threads=args.threads, progress=lambda _: None)
  print(f"convert_features: {labels.size / (time.process_time() - c0):.0f} rows/CPU-s, "
        f"{time.perf_counter() - t0:.1f} s wall", flush=True)


def _run(args, sizes, folder):
  paths = {k: folder / f"{k}.hdf5" for k in ("official", "zsl_jax")}
  with h5py.File(paths["official"], "r") as f:
    n, trainval = f["feature_map"].shape[0], f["trainval_loc"].size
  row_bytes = int(np.prod(sizes["feature_shape"])) * 4
  print(f"AWA2-shaped files: {n:,} rows of {AWA2['rows']:,} x {sizes['feature_shape']} float32 = "
        f"{n * row_bytes / 2**30:.2f} GiB inflated; trainval {trainval:,}; schedule {args.steps:,} steps x 40 rows; "
        f"{args.threads} threads; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
  print(f"copy ceiling now (one contiguous copy of 40 rows per step): {copy_ceiling(sizes['feature_shape']):.0f} "
        f"rows/CPU-s", flush=True)
  print(f"\n{'layout':15s} {'mode':32s} {'sampler':9s} {'steps':>6s} {'rows/s':>10s} {'rows/CPU-s':>12s} "
        f"{'CPU s':>8s} {'wall s':>8s} {'setup s':>8s}")
  reference = []
  for case in cases(paths, str(folder / "zsl_jax.npy")):
    if any(part in case[0] or part in case[2] for part in args.only.split(",")):
      run_case(case, args, reference)


if __name__ == "__main__":
  main()
