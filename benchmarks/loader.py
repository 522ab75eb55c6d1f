"""Decode + CLIP preprocess + host->device transfer: zsl_jax's loader vs torchvision's, per core.

  python benchmarks/loader.py [--classes 20 --per_class 25 --size 400x350 --spread 0.25 --large 0.0
                               --batch 32 --threads 1 --image_size 224 --repeats 3]

Generates one folder of ImageNet-like JPEGs (`<root>/<class>/*.JPEG`, quality 90, sizes drawn
uniformly within +-spread of --size, one in five portrait; a `--large` fraction 2.5x larger), then
times on the same files, interleaved, fastest of --repeats after a warm-up pass:
  zsl_jax: grain -> `LoadImage` (robust decode, CLIP resize + crop to uint8; `draft` decodes JPEGs
    of at least twice the target at a reduced DCT scale) -> batch, `--threads` grain threads
    (`pipeline.to_iter_dataset`) -> `device_prefetch` (global uint8 batches on the devices, waited
    for); once with draft (the default loader) and once bit-exact (draft off);
  torchvision: ImageFolder + DataLoader (`--threads` workers, each torch.set_num_threads(1),
    OMP_WAIT_POLICY=PASSIVE) with Resize(bicubic) / CenterCrop / ToTensor / Normalize, and the same
    transfer of its float32 batches (jax.device_put, waited for).
  decode only: `images.decode` of every file at full size, one thread: what the exact path cannot go
    below per image (3x torchvision per core would need decode + resize + transfer under a third of its
    time; on the 2-core machine PIL's decode alone is about that).
Each row reports wall and CPU seconds (this process and its reaped workers); img/s/core is
images per CPU-second, the figure that does not depend on other load on the machine. With torch,
the preprocessing parity of both zsl_jax paths against torchvision is printed in normalised units.
"""
import argparse
import os
import pathlib
import resource
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # Before torch is imported: no spinning OpenMP threads.

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from zsl_jax import sharding  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.data import device_prefetch  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.data import images  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.data import pipeline  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.data import transforms  # noqa: E402  pylint: disable=wrong-import-position
from zsl_jax.projects.hgr.data import imagenet21k  # noqa: E402  pylint: disable=wrong-import-position


class PathList:
  """Minimal index for `LoadImage`: row -> (path, label, path)."""

  def __init__(self, paths, labels):
    self.paths, self.labels_ = list(paths), list(labels)

  def read(self, row):
    return self.paths[row], self.labels_[row], self.paths[row]


def photo(rng, width, height, grain=80.0):
  """[height, width, 3] uint8: smooth colour fields, a few hard-edged discs and fine colour grain.

  The grain makes the files about as large as ImageNet's (about 100 kB at 400x350, quality 90):
  decoding time follows the entropy coded, so smoother images would flatter both loaders.
  """
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  img = np.full((height, width, 3), 128.0, np.float32)
  for _ in range(4):
    fx, fy = rng.uniform(0.3, 5.0, 2) * 2 * np.pi / np.array([width, height])
    img += rng.uniform(10, 40, 3).astype(np.float32) * np.sin(fx * xx + fy * yy + rng.uniform(0, 6.3))[..., None]
  for _ in range(4):
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
  noise = rng.standard_normal((height + 2, width + 2, 3), dtype=np.float32) * np.float32(grain / 4)
  img += noise[:-2, :-2] + noise[1:-1, 1:-1] + noise[2:, 2:] + noise[2:, :-2]  # grain correlated over ~2 px
  return np.clip(img, 0, 255).astype(np.uint8)


def draw_size(rng, size, spread, large):
  w, h = (v * rng.uniform(1 - spread, 1 + spread) for v in size)
  if rng.uniform() < large:
    w, h = 2.5 * w, 2.5 * h
  w, h = int(w), int(h)
  return (h, w) if rng.uniform() < 0.2 else (w, h)  # One in five portrait.


def make_folder(root, num_classes, per_class, size, spread=0.25, large=0.0, seed=0):
  """ImageNet-like JPEGs; returns (paths, labels) in ImageFolder's (sorted) order."""
  rng = np.random.default_rng(seed)
  paths, labels = [], []
  for c in range(num_classes):
    folder = root / f"n{c:08d}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      path = folder / f"{i:05d}.JPEG"
      path.write_bytes(images.encode_jpeg(photo(rng, *draw_size(rng, size, spread, large)), quality=90))
      paths.append(str(path))
      labels.append(c)
  return paths, labels


def _mesh():
  return sharding.make_mesh({"data": -1, "fsdp": 1})


def _timed(run):
  """(images, wall s, CPU s of this process and of the worker processes reaped meanwhile)."""
  c0, k0, t0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
  n = run()
  wall = time.perf_counter() - t0
  k1 = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = time.process_time() - c0 + (k1.ru_utime - k0.ru_utime) + (k1.ru_stime - k0.ru_stime)
  return n, wall, cpu


def bench_zsl(paths, labels, batch, threads, image_size, draft, mesh):
  import grain  # pylint: disable=import-outside-toplevel
  load = imagenet21k.LoadImage(PathList(paths, labels), image_size, "clip", draft=draft)
  ds = grain.MapDataset.source(imagenet21k.RowSource(np.arange(len(paths)))).map(load)
  ds = pipeline.to_iter_dataset(ds.batch(batch, drop_remainder=True), num_threads=threads)

  def run():
    n = 0
    for b in device_prefetch.DevicePrefetch(iter(ds), mesh):
      b["image"].block_until_ready()  # The transfer is part of the measured work.
      n += b["image"].shape[0]
    return n
  return _timed(run)


def bench_decode(paths):
  """The floor under any exact loader on this host: full-size decode alone (`images.decode`: PIL with its
  bundled libjpeg-turbo), one thread, no resize, batching or transfer."""
  return _timed(lambda: sum(images.decode(p).image.size[0] > 0 for p in paths))


def _torch_transform(tv, image_size):
  return tv.transforms.Compose([
      tv.transforms.Resize(image_size, interpolation=tv.transforms.InterpolationMode.BICUBIC),
      tv.transforms.CenterCrop(image_size), tv.transforms.ToTensor(),
      tv.transforms.Normalize(transforms.CLIP_MEAN, transforms.CLIP_STD)])


def _one_thread(worker_id):
  import torch  # pylint: disable=import-outside-toplevel
  del worker_id
  torch.set_num_threads(1)


def bench_torch(root, batch, threads, image_size, mesh):
  import jax  # pylint: disable=import-outside-toplevel

  from zsl_jax.models.torch_io import import_torchvision  # pylint: disable=import-outside-toplevel
  tv = import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(1)
  ds = tv.datasets.ImageFolder(str(root), transform=_torch_transform(tv, image_size))
  loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, drop_last=True,
                                       num_workers=threads if threads > 1 else 0, worker_init_fn=_one_thread,
                                       persistent_workers=False)
  data = sharding.batch_sharding(mesh)

  def run():
    n = 0
    for x, _ in loader:  # The workers are joined (and their CPU time reaped) when the loop ends.
      jax.device_put(x.numpy().transpose(0, 2, 3, 1), data).block_until_ready()
      n += x.shape[0]
    return n
  return _timed(run)


def parity(paths, image_size, limit=60):
  """Max and mean |zsl_jax - torchvision| in normalised units over `limit` images, per path."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from zsl_jax.models.torch_io import import_torchvision  # pylint: disable=import-outside-toplevel
  tf = _torch_transform(import_torchvision(), image_size)
  out = {}
  for draft in (False, True):
    diffs, drafted = [], 0
    for p in paths[:limit]:
      d = images.decode(p, image_size if draft else None)
      drafted += d.scale > 1
      got = transforms.normalize(transforms.clip_pixels(d.image, image_size, d.scale, d.full_size),
                                 transforms.CLIP_MEAN, transforms.CLIP_STD)
      want = tf(Image.open(p).convert("RGB")).numpy().transpose(1, 2, 0)
      diffs.append(np.abs(got - want))
    out[draft] = (max(float(x.max()) for x in diffs), max(float(x.mean()) for x in diffs), drafted, len(diffs))
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--classes", type=int, default=20, help="number of class folders")
  ap.add_argument("--per_class", type=int, default=25, help="JPEGs per class folder")
  ap.add_argument("--size", default="400x350", help="mean JPEG width x height (ImageNet averages about 400x350)")
  ap.add_argument("--spread", type=float, default=0.25, help="sizes uniform within +- this fraction of --size")
  ap.add_argument("--large", type=float, default=0.0, help="fraction of images 2.5x larger (the draft path)")
  ap.add_argument("--batch", type=int, default=32, help="batch size of both loaders")
  ap.add_argument("--threads", type=int, default=1, help="cores used: grain read threads / DataLoader workers")
  ap.add_argument("--image_size", type=int, default=224, help="preprocessed side length")
  ap.add_argument("--repeats", type=int, default=3, help="timed passes per pipeline (the fastest is reported)")
  ap.add_argument("--root", default=None, help="reuse/keep the generated folder here (default: a temp dir)")
  ap.add_argument("--no-torch", dest="no_torch", action="store_true",
                  help="time zsl_jax's loader only (machines without torch, e.g. the GPU suite)")
  args = ap.parse_args(argv)
  size = tuple(int(v) for v in args.size.lower().split("x"))
  mesh = _mesh()
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.root or tmp)
    t = time.perf_counter()
    paths, labels = make_folder(root, args.classes, args.per_class, size, args.spread, args.large)
    kb = np.mean([os.path.getsize(p) for p in paths]) / 1e3
    print(f"generated {len(paths)} JPEGs around {size[0]}x{size[1]} (mean {kb:.0f} kB) in "
          f"{time.perf_counter() - t:.1f}s under {root}; {pipeline.available_cores()} cores available, "
          f"timing on {args.threads}; transfer to {mesh.devices.size} {mesh.devices.flat[0].platform} device(s)")
    runs = {"zsl_jax grain, exact (draft off)":
            lambda: bench_zsl(paths, labels, args.batch, args.threads, args.image_size, False, mesh),
            "zsl_jax grain (LoadImage, draft)":
            lambda: bench_zsl(paths, labels, args.batch, args.threads, args.image_size, True, mesh)}
    runs["decode only, 1 thread (the floor)"] = lambda: bench_decode(paths)
    if not args.no_torch:
      runs["torchvision ImageFolder+DataLoader"] = lambda: bench_torch(root, args.batch, args.threads,
                                                                      args.image_size, mesh)
    best = {}
    for rep in range(args.repeats + 1):  # Interleaved, so load from other processes hits all alike.
      for name, fn in runs.items():
        n, wall, cpu = fn()
        if rep:  # Repeat 0 is the warm-up: page cache, imports, compiles, worker start.
          best[name] = min(best.get(name, (n, wall, cpu)), (n, wall, cpu), key=lambda r: r[2])
    print(f"{'pipeline':<36} {'images':>7} {'wall s':>7} {'CPU s':>7} {'img/s':>8} {'img/s/core':>11}")
    for name, (n, wall, cpu) in best.items():
      print(f"{name:<36} {n:>7} {wall:>7.2f} {cpu:>7.2f} {n / wall:>8.1f} {n / cpu:>11.1f}")
    if not args.no_torch:
      ref = best["torchvision ImageFolder+DataLoader"]
      for name in list(best)[:3]:
        n, wall, cpu = best[name]
        print(f"ratio {name} / torchvision: {(n / cpu) / (ref[0] / ref[2]):.2f}x per CPU-second, "
              f"{(n / wall) / (ref[0] / ref[1]):.2f}x wall")
      for draft, (mx, mean, drafted, count) in parity(paths, args.image_size).items():
        tol = (transforms.DRAFT_MEAN_TOL, transforms.DRAFT_MAX_TOL) if draft else (1e-6, 1e-6)
        within = "within" if mean <= tol[0] and mx <= tol[1] else "OUTSIDE"
        print(f"parity vs torchvision, {'draft' if draft else 'exact'} path: max |diff| {mx:.2g}, largest per-image "
              f"mean |diff| {mean:.2g} (normalised units; {drafted}/{count} images drafted): {within} the stated "
              f"tolerance (mean <= {tol[0]:g}, max <= {tol[1]:g})")


if __name__ == "__main__":
  main()
