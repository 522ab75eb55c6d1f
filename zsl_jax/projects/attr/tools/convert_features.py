"""One-time conversion of a DAZLE feature file to an uncompressed, memory-mappable layout.

`python -m zsl_jax.tools.convert_features --hdf5 data/AWA2/feature_map_ResNet_101_AWA2.hdf5` writes
`data/AWA2/feature_map_ResNet_101_AWA2.npy` beside it: `feature_map` as float32 [N, R, F] (regions-major,
as the models read it, not normalised) in numpy's `.npy` format, plus `<out>.json` (the hdf5's shape and
a fingerprint). Runs whose `--config.data.root` or `--config.data.hdf5` names that hdf5 then memory-map
the `.npy` found beside it (or name it with `--config.data.features_npy`): rows are read without
inflation, at page-cache speed, whatever memory is left. The hdf5 stays the source of labels, splits
and attributes. Needs N x R x F x 4 bytes of disk (AWA2: 15.0 GB; CUB 4.7 GB; SUN 5.8 GB).
"""
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

from zsl_jax import cli
from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import feature_store
from zsl_jax.projects.attr.data import hdf5_rows
from zsl_jax.projects.attr.data import region_features

logger = logging.getLogger(__name__)


def convert(hdf5, out=None, *, key="feature_map", threads=None, progress=print):
  """Writes the `.npy` (via a `.partial` file renamed at the end) and its sidecar; returns the `.npy` path."""
  region_features.load_dazle_hdf5_meta(hdf5)  # A complete DAZLE feature file, or a UserError naming the problem.
  out = paths.check_writable_file(out or os.path.splitext(hdf5)[0] + ".npy", "--out")
  for path in (out, feature_store.sidecar_path(out)):
    if os.path.exists(path):
      raise UserError(f"{path} already exists; delete it to convert again, or pass another --out")
  reader = hdf5_rows.Hdf5Rows(hdf5, key, threads=threads)
  shape = (reader.num_rows, reader.num_regions, reader.feature_dim)
  nbytes = reader.num_rows * reader.row_bytes
  free = shutil.disk_usage(os.path.dirname(os.path.abspath(out))).free
  if free < nbytes + (1 << 30):
    raise UserError(f"{out} needs {nbytes / 2**30:.1f} GiB but its disk has {free / 2**30:.1f} GiB free; "
                    f"pass --out on a larger disk")
  partial = out + ".partial"
  start, step = time.perf_counter(), max(reader.block_rows, reader.num_rows // 10)
  step = -(-step // reader.block_rows) * reader.block_rows  # Whole blocks per write.
  try:
    mm = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape)
    for lo in range(0, reader.num_rows, step):
      hi = min(lo + step, reader.num_rows)
      reader.read_range(lo, hi, mm[lo:hi])
      progress(f"{hi}/{reader.num_rows} rows ({time.perf_counter() - start:.0f} s)")
    mm.flush()
    del mm
    os.replace(partial, out)
  except BaseException:
    if os.path.exists(partial):
      os.remove(partial)
    raise
  with open(feature_store.sidecar_path(out), "w", encoding="utf-8") as f:
    json.dump({"source": os.path.basename(hdf5), "key": key, "layout": "float32 [N, R, F], regions-major",
               "fingerprint": feature_store.fingerprint(hdf5, key)}, f, indent=1)
  return out


def _parser():
  p = cli.ArgumentParser("convert_features", description=__doc__)
  p.add_argument("--hdf5", required=True, help="DAZLE-layout feature file (zsl_jax's extract_features or DAZLE's)")
  p.add_argument("--out", default=None, help="output .npy (default: the hdf5's path with .npy)")
  p.add_argument("--threads", type=int, default=None, help="inflating threads (default: the usable cores, max 16)")
  return p


def _run(args):
  if not os.path.isfile(args.hdf5):
    raise UserError(f"{args.hdf5} not found; pass the feature_map_ResNet_101_<DS>.hdf5 to convert")
  start = time.perf_counter()
  out = convert(args.hdf5, args.out, threads=args.threads)
  print(f"wrote {out} ({os.path.getsize(out) / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s; runs on "
        f"{args.hdf5} now memory-map it (or pass --config.data.features_npy={out})")


def main(argv=None):
  args = _parser().parse_args(argv)
  return cli.run_command("convert_features", _run, args,
                         interrupted_message="interrupted; nothing was written (the partial file was removed)")


if __name__ == "__main__":
  sys.exit(main())
