"""Scans the image folders and writes the seeded instance splits as one image index.

  python -m zsl_jax.tools.make_splits --hierarchy work/hier \
      --ilsvrc_train /data/ILSVRC2012/train --ilsvrc_val /data/ILSVRC2012/val \
      --imagenet21k /data/imagenet21k_winter21 --out work/hier/index --seed 0

Seen classes (class split `train`) come from ILSVRC-2012 (val in <wnid>/ folders); unseen
classes (`rest`) from ImageNet-21K. Splits (bits of one index; see zsl_jax.projects.hgr.hierarchy.splits):
train, val, test (zero-shot), ls{1,2,3,5,10}_train, ls_val, ls_test (low-shot); 21K-P, 2-hop and
3-hop are the same images restricted to the class splits p_rest, hop2, hop3 at load time.
`--dedup report` hashes every image and writes OUT/duplicates.json (identical images within a class,
across classes, and between the ILSVRC-1K and 21K folders: train/test leakage); `--dedup drop` also
leaves every copy but the first (the ILSVRC train one) out of the index.
"""
import json
import pathlib
import sys

from zsl_jax import cli
from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import dedup as dedup_lib
from zsl_jax.projects.hgr.hierarchy import graph as graph_lib
from zsl_jax.projects.hgr.hierarchy import splits as splits_lib


def make(hierarchy_dir, roots, out, seed=0, workers=32, overwrite=False, dedup="off"):
  """Builds the index from a build_hierarchy output directory; returns the index meta."""
  hdir = pathlib.Path(hierarchy_dir)
  h = graph_lib.Hierarchy.load(hdir / "hierarchy.json")
  try:
    cs = json.loads((hdir / "class_splits.json").read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {hdir / 'class_splits.json'} ({e}); "
                    "run python -m zsl_jax.tools.build_hierarchy first") from e
  cs.pop("counts", None)
  return splits_lib.build_index(out, h, cs, roots, seed=seed, workers=workers, overwrite=overwrite, dedup=dedup)


def report(meta):
  cs = meta["class_splits"]
  lines = [f"{meta['num_images']:,} images indexed (seed {meta['seed']}); classes: "
           + ", ".join(f"{k} {len(v):,}" for k, v in cs.items())]
  lines.append(f"{'split':<10} {'seen cls':>9} {'seen img':>11} {'unseen cls':>11} {'unseen img':>12}")
  for name, c in meta["counts"].items():
    if name.endswith("_images"):
      lines.append(f"{name[:-7]:<10} images: " + ", ".join(f"{k} {v:,}" for k, v in c.items()))
      continue
    lines.append(f"{name:<10} {c['seen_classes']:>9,} {c['seen_images']:>11,} {c['unseen_classes']:>11,} "
                 f"{c['unseen_images']:>12,}")
  missing = {k: len(v) for k, v in meta["missing_class_dirs"].items() if v}
  if missing:
    lines.append(f"class folders missing (no images): {missing}; listed in meta.json")
  empty = {k: len(v) for k, v in meta.get("empty_class_dirs", {}).items() if v}
  if empty:
    lines.append(f"class folders without image files: {empty}; listed in meta.json")
  if meta.get("dedup"):
    lines.append(dedup_lib.summary(meta["dedup"]) + "\n  groups listed in duplicates.json")
  return "\n".join(lines)


def _run(args):
  paths.check_writable_dir(args.out, "--out")
  roots = {"ilsvrc_train": args.ilsvrc_train, "ilsvrc_val": args.ilsvrc_val, "imagenet21k": args.imagenet21k}
  meta = make(args.hierarchy, roots, args.out, args.seed, args.workers, args.overwrite, args.dedup)
  print(report(meta))
  print(f"wrote {args.out}")


def main(argv=None):
  ap = cli.ArgumentParser("make_splits", description=__doc__)
  ap.add_argument("--hierarchy", required=True, help="build_hierarchy output dir (hierarchy.json, class_splits.json)")
  ap.add_argument("--ilsvrc_train", required=True, help="ILSVRC-2012 train folder with <wnid>/ subfolders")
  ap.add_argument("--ilsvrc_val", required=True, help="ILSVRC-2012 val folder with <wnid>/ subfolders")
  ap.add_argument("--imagenet21k", required=True, help="ImageNet-21K (winter 2021) folder with <wnid>/ subfolders")
  ap.add_argument("--out", required=True, help="new directory for the image index")
  ap.add_argument("--seed", type=int, default=0, help="seed of every random choice (val images, low-shot images)")
  ap.add_argument("--workers", type=int, default=32, help="parallel directory listings (raise on network filesystems)")
  ap.add_argument("--dedup", choices=splits_lib.DEDUP_MODES, default="off",
                  help="hash every image (BLAKE2b, --workers threads) and write duplicates.json: identical images "
                  "across classes and between the ILSVRC-1K and 21K folders; 'drop' also leaves the extra copies "
                  "out of the index (the ILSVRC train copy is kept)")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing index in --out")
  cli.show_warnings()  # inputs left out are counted in warnings
  return cli.run_command("make_splits", _run, ap.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
