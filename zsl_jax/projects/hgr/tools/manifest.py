"""Class counts of the fall-2011 and winter-2021 ImageNet-21K releases side by side, with their intersection.

  python -m zsl_jax.tools.manifest --testsets imagenet-testsets.json --winter21 winter_2021.txt \
      --out work/manifest.json

HGR-Net's splits are DGP's class lists ∩ the hierarchy graph ∩ the image release. Papers differ in the
release they use (fall 2011: 21,841 classes; winter 2021: 19,167, with some classes removed), so the
same protocol name gives different class counts. This prints, per release and for the classes in both,
the counts of every class split (train = seen ILSVRC-1K, 21K-D = rest, 21K-P, 2-hop, 3-hop) under the
reference's rules (`splits.class_splits`), and writes them as JSON with the SHA-256 of every input list.
The fall-2011 and 21K-P lists default to the ones shipped in the timm wheel; pass files to use others.
"""
import hashlib
import json
import pathlib
import sys

from zsl_jax import cli
from zsl_jax import paths
from zsl_jax.projects.hgr.hierarchy import splits as splits_lib

RELEASES = ("fall2011", "winter2021", "both")
ROWS = (  # (row label, class split key of `splits.class_splits`)
    ("train (ILSVRC-1K seen)", "train"), ("21K-D (unseen)", "rest"), ("21K-P seen", "p_train"),
    ("21K-P (unseen)", "p_rest"), ("2-hop", "hop2"), ("3-hop", "hop3"), ("3-hop pure", "hop3_pure"))


def _list(path_or_timm, timm_name):
  path = splits_lib.timm_class_list(timm_name) if path_or_timm == "timm" else pathlib.Path(path_or_timm)
  return path, splits_lib.read_wnid_list(path)


def _sha256(path):
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def manifest(testsets, winter21, fall11="timm", p_fall11="timm", p_winter21="timm", universe=None):
  """The manifest dict: release sizes, class-split counts per release (and both), input files and hashes.

  Args:
    testsets: DGP's imagenet-testsets.json. winter21, fall11: the releases' WNID lists ('timm': timm's).
    p_fall11, p_winter21: the ImageNet-21K-P lists of each release ('timm': timm's).
    universe: optional WNID list of the hierarchy graph (e.g. imagenet-xml-wnids.json or a hierarchy's
      classes); splits keep only its WNIDs, as the reference keeps only graph nodes. Default: no filter.
  """
  ts = splits_lib.read_testsets(testsets)
  files = {"testsets": pathlib.Path(testsets), "winter2021": pathlib.Path(winter21)}
  w21 = splits_lib.read_wnid_list(winter21)
  files["fall2011"], f11 = _list(fall11, "fall2011")
  files["p_fall2011"], pf = _list(p_fall11, "p_fall2011")
  files["p_winter2021"], pw = _list(p_winter21, "p_winter2021")
  uni = None
  if universe:
    files["universe"] = pathlib.Path(universe)
    uni = splits_lib.read_wnid_list(universe)
  w21_set, pw_set = set(w21), set(pw)
  both = [w for w in dict.fromkeys(f11) if w in w21_set]
  releases = {"fall2011": (f11, pf), "winter2021": (w21, pw), "both": (both, [w for w in pf if w in pw_set])}
  counts, sizes = {}, {}
  for name, (wnids, p_list) in releases.items():
    sizes[name] = len(set(wnids))
    cs = splits_lib.class_splits(wnids if uni is None else uni, ts, wnids, p_list, warn=False)
    counts[name] = {key: len(cs.get(key, [])) for _, key in ROWS}
  return {"format": "zsl_jax.manifest/1", "release_classes": sizes,
          "only_fall2011": len(set(f11) - w21_set), "only_winter2021": len(w21_set - set(f11)),
          "p_list_classes": {"fall2011": len(set(pf)), "winter2021": len(pw_set)},
          "universe_classes": None if uni is None else len(set(uni)), "counts": counts,
          "inputs": {k: {"path": str(v), "sha256": _sha256(v)} for k, v in files.items()}}


def table(m):
  """The console table: one row per class split, one column per release."""
  head = f"{'classes':<24}" + "".join(f"{r:>12}" for r in RELEASES)
  lines = [head, f"{'release list':<24}" + "".join(f"{m['release_classes'][r]:>12,}" for r in RELEASES)]
  for label, key in ROWS:
    lines.append(f"{label:<24}" + "".join(f"{m['counts'][r][key]:>12,}" for r in RELEASES))
  lines.append(f"only in fall 2011: {m['only_fall2011']:,}; only in winter 2021: {m['only_winter2021']:,}; "
               f"21K-P lists: fall 2011 {m['p_list_classes']['fall2011']:,}, "
               f"winter 2021 {m['p_list_classes']['winter2021']:,}"
               + ("" if m["universe_classes"] is None else f"; restricted to {m['universe_classes']:,} graph WNIDs"))
  return "\n".join(lines)


def _run(args):
  out = pathlib.Path(args.out)
  paths.check_writable_dir(out.parent, "--out's folder")
  m = manifest(args.testsets, args.winter21, args.fall11, args.p_fall11, args.p_winter21, args.universe)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(m, indent=1))
  print(table(m))
  print(f"wrote {out}")


def main(argv=None):
  ap = cli.ArgumentParser("manifest", description=__doc__)
  ap.add_argument("--testsets", required=True, help="DGP/GCNZ imagenet-testsets.json (train/all/2-hops/3-hops lists)")
  ap.add_argument("--winter21", required=True, help="WNIDs of the ImageNet-21K winter-2021 release, one per line")
  ap.add_argument("--fall11", default="timm", help="WNIDs of the fall-2011 release; 'timm' = the 21,841-class list "
                  "in the timm wheel (timm/data/_info/imagenet22k_synsets.txt)")
  ap.add_argument("--p_fall11", default="timm", help="ImageNet-21K-P list of the fall-2011 release ('timm')")
  ap.add_argument("--p_winter21", default="timm", help="ImageNet-21K-P list of the winter-2021 release ('timm')")
  ap.add_argument("--universe", help="optional WNID list of the hierarchy graph (e.g. imagenet-xml-wnids.json): "
                  "splits keep only these, as the reference keeps only graph nodes")
  ap.add_argument("--out", required=True, help="JSON file to write the manifest to")
  return cli.run_command("manifest", _run, ap.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
