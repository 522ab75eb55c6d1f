r"""ResNet region features for AWA2/CUB/SUN into a DAZLE-layout hdf5, resumable.

  python -m zsl_jax.tools.extract_features --dataset AWA2 --images data/AWA2 \
      --xlsa17 data/xlsa17/data/AWA2 --weights resnet101-63fe2227.pth \
      --w2v w2v/AWA2_attribute.pkl --out feature_map_ResNet_101_AWA2.hdf5

Replaces DAZLE's `extract_feature_map_ResNet_101_<DS>.py` (which needs a GPU, has a pdb stop in
its loop and restarts from zero when interrupted). Images are read in res101.mat order through a
grain pipeline (threads decode + torchvision preprocessing), the frozen ResNet trunk runs jitted
with the batch sharded over all local devices, and rows go to the hdf5 as they finish together
with a persistent `_done` marker, so re-running the same command continues where it stopped. The
finished file has exactly the keys, shapes and dtypes DAZLE's loaders read (plus `class_names`,
`attribute_names` and, when present, `train_loc`/`val_loc`), the marker is removed at the end.

Undecodable images get all-zero features (as the reference did for odd SUN files) and are logged
and counted; a missing image file is an error unless `--skip-missing` (then also zeros).
"""
import hashlib
import logging
import os
import signal
import sys

import grain
import h5py
import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
from tqdm import tqdm

from zsl_jax import cli
from zsl_jax import paths as paths_lib
from zsl_jax.data import pipeline
from zsl_jax.data.images import CorruptImageError
from zsl_jax.data.images import decode_rgb
from zsl_jax.data.transforms import imagenet_preprocess
from zsl_jax.errors import UserError
from zsl_jax.models import resnet_convert
from zsl_jax.models.resnet import ResNet
from zsl_jax.projects.attr.data import word_vectors
from zsl_jax.projects.attr.data import xlsa17 as zb

logger = logging.getLogger(__name__)
_DONE = "_done"


def _fingerprint(path):
  """sha256 of the weights file, so a resume never mixes features of two checkpoints."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


class _ImageSource:
  """grain source: row -> {'image' [S, S, 3] float32, 'index', 'ok'} (ok False: undecodable)."""

  def __init__(self, paths, rows, resolution):
    self.paths, self.rows, self.resolution = list(paths), np.asarray(rows, np.int64), resolution

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    ok = True
    try:
      img, _ = decode_rgb(self.paths[i])
      x = imagenet_preprocess(img, self.resolution, self.resolution)
    except CorruptImageError as e:
      logger.warning("undecodable image, writing zero features: %s", e)
      x, ok = np.zeros((self.resolution, self.resolution, 3), np.float32), False
    return {"image": x, "index": np.int64(self.rows[i]), "ok": np.bool_(ok)}


def _create_output(path, n, feat_shape, meta, attrs, gzip_level):
  paths_lib.make_parent(path)
  tmp = path + ".creating"
  with h5py.File(tmp, "w") as f:
    f.create_dataset("feature_map", shape=(n,) + feat_shape, dtype=np.float32, compression="gzip",
                     compression_opts=gzip_level, chunks=(1,) + feat_shape)
    for key, value in meta.items():
      if value is None:
        continue
      if key in ("class_names", "attribute_names"):
        f.create_dataset(key, data=np.array(value, dtype=h5py.string_dtype()))
      else:
        f.create_dataset(key, data=value, compression="gzip")
    f.create_dataset(_DONE, data=np.zeros(n, np.uint8), chunks=True)
    f.attrs.update(attrs)
  os.replace(tmp, path)  # Only a fully initialised file ever carries the final name.


def _open_output(path, n, feat_shape, meta, attrs, gzip_level):
  """Opens (resume) or creates the output; returns the h5py file or None when already complete.

  An existing file, finished or not, must have been written with this run's settings (`attrs`: weights hash,
  resolution, dtype, ...): otherwise its features are not the ones asked for, and the run stops naming them.
  """
  if not os.path.exists(path):
    _create_output(path, n, feat_shape, meta, attrs, gzip_level)
  try:
    with h5py.File(path, "r") as f:  # Inspect read-only: a finished file is never opened for writing.
      fits = "feature_map" in f and tuple(f["feature_map"].shape) == (n,) + feat_shape
      unfinished = _DONE in f
      stored = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
  except OSError as e:
    raise UserError(f"{path} exists but is not a readable hdf5 file ({e}); move it away or choose another --out") from e
  _check_settings(path, stored, attrs, unfinished)
  if not fits:
    raise UserError(f"{path} exists and is not a {n} x {feat_shape} feature file of this run; move it away or "
                    f"choose another --out")
  if not unfinished:
    return None
  return h5py.File(path, "r+")


def _check_settings(path, stored, attrs, unfinished):
  """UserError naming each setting of `attrs` that differs from the one the existing file was written with."""
  if "weights_sha256" not in stored:
    raise UserError(f"{path} exists but was not written by extract_features (it stores no settings); move it away "
                    f"or choose another --out")
  diff = [k for k in attrs if str(stored.get(k)) != str(attrs[k])]
  if not diff:
    return
  shown = lambda k, v: f"{str(v)[:12]}..." if k == "weights_sha256" else str(v)
  what = ", ".join(f"{k}: file {shown(k, stored.get(k))}, this run {shown(k, attrs[k])}" for k in diff)
  if unfinished:
    raise UserError(f"{path} is an unfinished extraction with different settings ({what}); re-run with the original "
                    f"arguments, or delete it to start over")
  raise UserError(f"{path} is a finished extraction with different settings ({what}); choose another --out, or move "
                  f"the file away to extract again")


def _write_rows(f, indices, feats):
  """Rows are ascending; contiguous runs are written as slices (fast path for a fresh run)."""
  fm, done = f["feature_map"], f[_DONE]
  pos = 0
  for lo, hi in _runs(indices):
    fm[lo:hi] = feats[pos:pos + hi - lo]
    pos += hi - lo
  for lo, hi in _runs(indices):  # Marked only after the features are in.
    done[lo:hi] = 1
  f.flush()


def _runs(indices):
  if indices.size == 0:
    return []
  breaks = np.flatnonzero(np.diff(indices) != 1)
  starts = np.concatenate([[0], breaks + 1])
  stops = np.concatenate([breaks + 1, [indices.size]])
  return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]


def _build_forward(model, variables):
  """jit-compiled trunk with the batch sharded over a 1-D mesh of all local devices."""

  devices = jax.local_devices()
  mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)
  data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())

  def forward(v, x):  # [B, S, S, 3] -> [B, 2048, h, w] float32 (DAZLE's channels-first rows)
    return model.apply(v, x).astype(jnp.float32).transpose(0, 3, 1, 2)

  variables = jax.device_put(variables, repl)
  fn = jax.jit(forward, in_shardings=(repl, data), out_shardings=data)
  return lambda x: fn(variables, jax.device_put(x, data))


def extract(dataset, images, xlsa17, weights, out, *, resolution=224, batch_size=32, w2v=None, skip_missing=False,
            dtype="float32", num_workers=8, max_images=None, gzip_level=1, progress=True):
  """Runs (or resumes) one extraction; returns counts {'computed', 'already_done', 'corrupt', 'missing', 'complete'}.

  Args:
    max_images: stop after this many new images (split a long extraction over time-limited jobs).
    gzip_level: 1 writes ~2x faster than h5py's default 4 for a ~5% larger file (rows are
      compressed on the host while the accelerator waits).
  """
  dataset = zb.check_dataset_name(dataset)
  images, xlsa17, weights, out = (os.fspath(p) for p in (images, xlsa17, weights, out))
  _check_options(resolution, dtype, batch_size)
  paths_lib.check_writable_file(out, "--out")
  splits, res, w2v_arr = _load_annotations(dataset, xlsa17, w2v)
  n = res["labels"].size
  paths, missing = _image_paths(dataset, images, res["image_files"], skip_missing)
  stage_sizes, forward, feat_shape = _load_trunk(weights, dtype, resolution)
  meta = {"labels": res["labels"], "trainval_loc": splits["trainval_loc"], "test_seen_loc": splits["test_seen_loc"],
          "test_unseen_loc": splits["test_unseen_loc"], "att": splits["att"], "original_att": splits["original_att"],
          "w2v_att": w2v_arr, "class_names": splits["class_names"], "train_loc": splits["train_loc"],
          "val_loc": splits["val_loc"]}
  attrs = {"dataset": dataset, "resolution": resolution, "stage_sizes": str(stage_sizes), "dtype": dtype,
           "weights_sha256": _fingerprint(weights), "num_images": n}
  f = _open_output(out, n, feat_shape, meta, attrs, gzip_level)
  stats = {"computed": 0, "already_done": n, "corrupt": [], "missing": [], "complete": True}
  if f is None:
    logger.info("%s is already complete", out)
    return stats
  try:
    todo = _rows_to_do(f, stats, max_images)
    _write_missing(f, todo[missing[todo]], paths, feat_shape, stats)
    todo = todo[~missing[todo]]
    if todo.size:
      _compute_rows(f, todo, paths, forward, stats, resolution=resolution, batch_size=batch_size,
                    num_workers=num_workers, desc=f"{dataset} {resolution}px", progress=progress)
    _mark_if_complete(f, stats)
  finally:
    f.close()
  if stats["corrupt"]:
    logger.warning("%d undecodable images got zero features: %s", len(stats["corrupt"]), stats["corrupt"][:10])
  return stats


def _check_options(resolution, dtype, batch_size):
  """Rejects bad numeric options before any file is read."""
  if resolution % 32 or resolution < 32:
    raise UserError(f"--resolution {resolution} must be a positive multiple of 32 (224 -> 7x7, 448 -> 14x14 regions)")
  if dtype not in ("float32", "bfloat16"):
    raise UserError(f"--dtype {dtype!r}: use float32 or bfloat16")
  if batch_size < 1 or batch_size % jax.local_device_count():
    raise UserError(f"--batch-size {batch_size} is not a positive multiple of the {jax.local_device_count()} devices; "
                    f"use {max(1, -(-batch_size // jax.local_device_count())) * jax.local_device_count()}")


def _load_annotations(dataset, xlsa17, w2v):
  """(att_splits.mat, res101.mat, word vectors or None), checked against each other before any work starts."""
  splits = zb.load_att_splits(os.path.join(xlsa17, "att_splits.mat"))
  res = zb.load_res101(os.path.join(xlsa17, "res101.mat"))
  labels, n = res["labels"], res["labels"].size
  num_classes, num_attributes = splits["att"].shape
  if labels.max() >= num_classes:
    raise UserError(f"res101.mat has label {labels.max() + 1} but att_splits.mat only {num_classes} classes; the two "
                    f"files belong to different datasets")
  zb.check_locs(dataset, n, {k: splits[k] for k in ("trainval_loc", "test_seen_loc", "test_unseen_loc")})
  w2v_arr = None
  if w2v is not None:
    w2v_arr = word_vectors.load_vector_array(w2v)
    if w2v_arr.shape[0] != num_attributes:
      raise UserError(f"word vectors {w2v} have {w2v_arr.shape[0]} rows but att_splits.mat has {num_attributes} "
                      f"attributes; use the word vectors of {dataset}'s attribute names")
  return splits, res, w2v_arr


def _image_paths(dataset, images, image_files, skip_missing):
  """Local paths in res101.mat order and a bool mask [N] of missing files (an error unless skip_missing)."""
  resolve = zb.resolve_image_layout(dataset, images, image_files)
  paths = [resolve(p) for p in image_files]
  missing = np.array([not os.path.isfile(p) for p in paths])
  if missing.any() and not skip_missing:
    first = paths[int(np.flatnonzero(missing)[0])]
    raise UserError(f"{int(missing.sum())} of {len(paths)} images are missing (first: {first}); complete the image "
                    f"folder, or pass --skip-missing to write zero features for them")
  return paths, missing


def _load_trunk(weights, dtype, resolution):
  """(stage sizes, jitted forward, per-image feature shape (2048, h, w)) of the frozen ResNet trunk in `weights`."""
  stage_sizes, variables = resnet_convert.load_torchvision_checkpoint(weights)
  compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  model = ResNet(stage_sizes=stage_sizes, features_only=True, dtype=compute)
  resnet_convert.check_variables(model, variables, resolution)
  forward = _build_forward(model, variables)
  out_shape = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, resolution, resolution, 3), np.float32))
  return stage_sizes, forward, (out_shape.shape[3], out_shape.shape[1], out_shape.shape[2])


def _rows_to_do(f, stats, max_images):
  """Ascending rows not yet marked done (at most max_images); records how many were done before this run."""
  done = f[_DONE][()].astype(bool)
  stats["already_done"] = int(done.sum())
  todo = np.flatnonzero(~done)
  if max_images is not None:
    todo = todo[:max_images]
  return todo


def _write_missing(f, gone, paths, feat_shape, stats):
  """--skip-missing: zeros for the rows `gone` whose image file does not exist, logged."""
  if not gone.size:
    return
  for i in gone:
    logger.warning("missing image, writing zero features: %s", paths[i])
  _write_rows(f, gone, np.zeros((gone.size,) + feat_shape, np.float32))
  stats["missing"] = [paths[i] for i in gone]


def _compute_rows(f, todo, paths, forward, stats, *, resolution, batch_size, num_workers, desc, progress):
  """Decodes the images of rows `todo` in grain threads and writes the trunk's features, one batch in flight."""
  source = _ImageSource([paths[i] for i in todo], todo, resolution)
  batches = pipeline.padded_eval_dataset(grain.MapDataset.source(source), batch_size, process_index=0,
                                         process_count=1)
  read = grain.ReadOptions(num_threads=num_workers, prefetch_buffer_size=max(2, num_workers))
  batches = batches.to_iter_dataset(read)
  bar = tqdm(total=int(todo.size), desc=desc, unit="img", disable=not progress)
  pending = None
  for batch in batches:
    result = (forward(batch["image"]), batch)  # Dispatch async, then write the previous batch.
    if pending is not None:
      _finish(f, pending, stats, bar)
    pending = result
  if pending is not None:
    _finish(f, pending, stats, bar)
  bar.close()


def _mark_if_complete(f, stats):
  """Drops the `_done` marker once every row is written, so the file has exactly DAZLE's layout."""
  left = int(f[_DONE].size - np.count_nonzero(f[_DONE][()]))
  stats["complete"] = left == 0
  if left == 0:
    del f[_DONE]
    f.attrs["complete"] = True


def _finish(f, pending, stats, bar):
  feats, batch = pending
  feats = np.asarray(feats)  # [B, 2048, h, w]
  mask = np.asarray(batch["_mask"])
  rows, ok = np.asarray(batch["index"])[mask], np.asarray(batch["ok"])[mask]
  feats = feats[mask]
  feats[~ok] = 0.0
  stats["corrupt"] += [int(r) for r in rows[~ok]]
  _write_rows(f, rows, feats)
  stats["computed"] += int(rows.size)
  bar.update(int(rows.size))


def _parser():
  p = cli.ArgumentParser("extract_features", description=__doc__)
  p.add_argument("--dataset", required=True, help="AWA2, CUB or SUN (decides the image-path prefix rule)")
  p.add_argument("--images", required=True, help="image root: the folder holding Animals_with_Attributes2/ (AWA2), "
                 "CUB_200_2011/ (CUB) or images/ (SUN); shorter layouts are detected")
  p.add_argument("--xlsa17", required=True, help="xlsa17 folder of the dataset with res101.mat and att_splits.mat")
  p.add_argument("--weights", required=True, help="torchvision ResNet-101 (or -50) state dict .pth")
  p.add_argument("--out", required=True, help="output hdf5 (re-run the same command to resume an interrupted run)")
  p.add_argument("--w2v", default=None, help="attribute word vectors (.pkl/.npy, [attributes, D]) stored as w2v_att; "
                 "DAZLE's loaders need this key")
  p.add_argument("--resolution", type=int, default=224, help="Resize+CenterCrop size: 224 -> 7x7, 448 -> 14x14 regions")
  p.add_argument("--batch-size", type=int, default=32, help="global batch, a multiple of the device count")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="compute dtype (output is float32)")
  p.add_argument("--num-workers", type=int, default=8, help="image decoding threads")
  p.add_argument("--skip-missing", action="store_true", help="write zero features for missing image files instead of "
                 "stopping")
  p.add_argument("--max-images", type=int, default=None, help="process at most this many new images, then stop "
                 "(resume later)")
  p.add_argument("--gzip-level", type=int, default=1, choices=range(10), metavar="0-9",
                 help="gzip level of feature_map (1: fastest writes; DAZLE used h5py's default 4)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  return p


def _interrupt_on_sigterm():
  """Batch schedulers stop jobs with SIGTERM; turning it into KeyboardInterrupt closes the hdf5 cleanly."""

  def handler(signum, frame):  # pylint: disable=unused-argument
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, handler)


def _run(args):
  stats = extract(args.dataset, args.images, args.xlsa17, args.weights, args.out, resolution=args.resolution,
                  batch_size=args.batch_size, w2v=args.w2v, skip_missing=args.skip_missing, dtype=args.dtype,
                  num_workers=args.num_workers, max_images=args.max_images, gzip_level=args.gzip_level,
                  progress=not args.no_progress)
  state = "complete" if stats["complete"] else "partial (re-run to continue)"
  print(f"{args.out}: {state}; computed {stats['computed']} images this run, {stats['already_done']} were already "
        f"done, {len(stats['corrupt'])} undecodable and {len(stats['missing'])} missing images got zero features")


def main(argv=None):
  args = _parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  _interrupt_on_sigterm()
  return cli.run_command("extract_features", _run, args, interrupted_message=(
      f"interrupted; finished rows are saved in {args.out}, re-run the same command to resume"))


if __name__ == "__main__":
  sys.exit(main())
