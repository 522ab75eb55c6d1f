"""Decode + CLIP-preprocess throughput: zsl_jax's grain pipeline vs torchvision ImageFolder.

  python benchmarks/loader.py [--classes 20 --per_class 25 --size 400x320 --batch 32 --threads 1]

Generates one JPEG folder (`<root>/<wnid>/*.JPEG`, ImageNet-like sizes), then times, in one run
and on the same files, (a) zsl_jax: grain MapDataset -> `LoadImage` (robust decode, CLIP
preprocess to 224) -> batch, in-process threads; (b) torchvision `ImageFolder` + `DataLoader`
with the same Resize(224, bicubic) / CenterCrop / ToTensor / Normalize. Both run on `--threads`
cores (grain read threads vs DataLoader workers; torch intra-op threads 1) after one warm-up
pass (interleaved, fastest of --repeats), and the table reports images/s per core and the
grain/torch ratio.
"""
import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from zsl_jax.data import images  # pylint: disable=wrong-import-position
from zsl_jax.data import transforms  # pylint: disable=wrong-import-position
from zsl_jax.projects.hgr.data import demo as synthetic_imagenet  # pylint: disable=wrong-import-position
from zsl_jax.projects.hgr.data import imagenet21k  # pylint: disable=wrong-import-position


class PathList:
  """Minimal index for `LoadImage`: row -> (path, label, path)."""

  def __init__(self, paths, labels):
    self.paths, self.labels_ = list(paths), list(labels)

  def read(self, row):
    return self.paths[row], self.labels_[row], self.paths[row]


def make_folder(root, num_classes, per_class, size, seed=0):
  """ImageNet-like JPEGs (default 400x320, quality 90) with class-dependent content."""
  rng = np.random.default_rng(seed)
  w, h = size
  wnids = [w_ for w_, *_ in synthetic_imagenet.DEMO_TREE][:num_classes]
  classes = synthetic_imagenet.demo_classes()
  for wnid in wnids:
    (root / wnid).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
      base = synthetic_imagenet._pattern(rng, max(w, h), classes[wnid][4])[:h, :w]  # pylint: disable=protected-access
      (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(images.encode_jpeg(base, quality=90))
  return wnids


def bench_grain(paths, labels, batch, threads, image_size):
  import grain  # pylint: disable=import-outside-toplevel
  src = imagenet21k.RowSource(np.arange(len(paths)))
  ds = grain.MapDataset.source(src).map(imagenet21k.LoadImage(PathList(paths, labels), image_size, "clip"))
  ds = ds.batch(batch, drop_remainder=False).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads * 2)))
  n = 0
  t = time.perf_counter()
  for b in ds:
    n += int(b["_mask"].sum())
  return n, time.perf_counter() - t


def bench_torch(root, batch, threads, image_size):
  from zsl_jax.models.torch_io import import_torchvision  # pylint: disable=import-outside-toplevel
  tv = import_torchvision()
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(1)
  tf = tv.transforms.Compose([
      tv.transforms.Resize(image_size, interpolation=tv.transforms.InterpolationMode.BICUBIC),
      tv.transforms.CenterCrop(image_size), tv.transforms.ToTensor(),
      tv.transforms.Normalize(transforms.CLIP_MEAN, transforms.CLIP_STD)])
  ds = tv.datasets.ImageFolder(str(root), transform=tf)
  loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=threads if threads > 1 else 0,
                                       persistent_workers=False)
  n = 0
  t = time.perf_counter()
  for x, _ in loader:
    n += x.shape[0]
  return n, time.perf_counter() - t


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--classes", type=int, default=20, help="number of class folders (at most 39)")
  ap.add_argument("--per_class", type=int, default=25, help="JPEGs per class folder")
  ap.add_argument("--size", default="400x320", help="JPEG width x height (ImageNet averages about 400x350)")
  ap.add_argument("--batch", type=int, default=32, help="batch size of both loaders")
  ap.add_argument("--threads", type=int, default=1, help="cores used: grain read threads / DataLoader workers")
  ap.add_argument("--image_size", type=int, default=224, help="preprocessed side length")
  ap.add_argument("--repeats", type=int, default=3, help="timed passes per pipeline (the fastest is reported)")
  ap.add_argument("--root", default=None, help="reuse/keep the generated folder here (default: a temp dir)")
  ap.add_argument("--no-torch", dest="no_torch", action="store_true",
                  help="time the grain pipeline only (machines without torch, e.g. the GPU suite)")
  args = ap.parse_args(argv)
  size = tuple(int(v) for v in args.size.lower().split("x"))
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(args.root or tmp)
    t = time.perf_counter()
    wnids = make_folder(root, args.classes, args.per_class, size)
    print(f"generated {len(wnids) * args.per_class} JPEGs {size[0]}x{size[1]} in {time.perf_counter() - t:.1f}s "
          f"under {root}; {os.cpu_count()} CPUs visible, timing on {args.threads}")
    paths, labels = [], []
    for i, w in enumerate(sorted(wnids)):
      files = sorted((root / w).iterdir())
      paths += [str(f) for f in files]
      labels += [i] * len(files)
    runs = {"zsl_jax grain (LoadImage)": lambda: bench_grain(paths, labels, args.batch, args.threads, args.image_size),
            "torchvision ImageFolder+DataLoader": lambda: bench_torch(root, args.batch, args.threads, args.image_size)}
    if args.no_torch:
      runs.pop("torchvision ImageFolder+DataLoader")
    best = {}
    for rep in range(args.repeats + 1):  # Interleaved, so load from other processes hits both alike.
      for name, fn in runs.items():
        n, sec = fn()
        if rep:  # Repeat 0 is the warm-up: page cache, imports, worker start.
          best[name] = min(best.get(name, (n, sec)), (n, sec), key=lambda r: r[1])
    rows = [(name, n, sec, n / sec, n / sec / args.threads) for name, (n, sec) in best.items()]
    print(f"{'pipeline':<36} {'images':>7} {'seconds':>8} {'img/s':>8} {'img/s/core':>11}")
    for name, n, sec, ips, ipc in rows:
      print(f"{name:<36} {n:>7} {sec:>8.2f} {ips:>8.1f} {ipc:>11.1f}")
    if len(rows) > 1:
      print(f"ratio grain / torchvision (img/s per core): {rows[0][4] / rows[1][4]:.2f}")


if __name__ == "__main__":
  main()
