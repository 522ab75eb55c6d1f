"""make_splits --dedup: planted byte-identical images are found, classified, reported and dropped."""
import json
import os

import pytest

from zsl_jax.projects.hgr.data import imagenet21k
from zsl_jax.projects.hgr.hierarchy import graph
from zsl_jax.projects.hgr.hierarchy import splits
from zsl_jax.projects.hgr.tools import make_splits

SEEN = ["n00000011", "n00000012"]
UNSEEN = ["n00000021", "n00000022", "n00000023"]
# Planted copies: (copy, original), both as root/wnid/name.
PLANTED = [
    ("w21/n00000021/x_leak.JPEG", "train/n00000011/a1.JPEG"),  # ILSVRC train image in a 21K folder
    ("w21/n00000022/y_leak.JPEG", "train/n00000011/a1.JPEG"),  # ... and in a second one (a group of 3)
    ("w21/n00000022/y_dup.JPEG", "w21/n00000021/x3.JPEG"),     # one 21K image under two classes
    ("w21/n00000023/z_copy.JPEG", "w21/n00000023/z0.JPEG"),    # twice in one class folder
    ("val/n00000012/w_dup.JPEG", "train/n00000012/b2.JPEG"),   # ILSVRC train image in ILSVRC val
]
DROPPED = {"w21/n00000021/x_leak.JPEG", "w21/n00000022/y_leak.JPEG", "w21/n00000022/y_dup.JPEG",
           "w21/n00000023/z_copy.JPEG", "val/n00000012/w_dup.JPEG"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("dedup")
  files = {"train/n00000011": "a", "val/n00000011": "v", "train/n00000012": "b", "val/n00000012": "w",
           "w21/n00000021": "x", "w21/n00000022": "y", "w21/n00000023": "z"}
  for i, (folder, stem) in enumerate(files.items()):
    (root / folder).mkdir(parents=True)
    for j in range(5):  # Distinct random bytes: no accidental duplicates.
      (root / folder / f"{stem}{j}.JPEG").write_bytes(os.urandom(64 + i * 8 + j))
  for copy, original in PLANTED:
    (root / copy).write_bytes((root / original).read_bytes())
  edges = [("fall11", "n00000021"), ("n00000021", "n00000011"), ("n00000021", "n00000012"),
           ("n00000021", "n00000022"), ("fall11", "n00000023")]
  h = graph.Hierarchy.from_graph(graph.Graph(edges), str)
  h.save(root / "hier" / "hierarchy.json")
  cs = splits.class_splits(h.wnids, {"train": SEEN, "all": UNSEEN}, h.wnids)
  (root / "hier" / "class_splits.json").write_text(json.dumps(cs))
  roots = {"ilsvrc_train": root / "train", "ilsvrc_val": root / "val", "imagenet21k": root / "w21"}
  return root, roots


def _indexed(ix, root):
  return {os.path.relpath(ix.path(r), root) for r in range(len(ix))}


def test_dedup_report_finds_every_planted_duplicate(setup):
  root, roots = setup
  meta = make_splits.make(root / "hier", roots, root / "report", dedup="report")
  assert meta["dedup"] == {"mode": "report", "files_hashed": 35 + 5, "bytes_hashed": meta["dedup"]["bytes_hashed"],
                           "groups": 4, "duplicate_files": 5, "within_class_groups": 1, "across_classes_groups": 2,
                           "ilsvrc_vs_21k_groups": 1, "ilsvrc_train_vs_val_groups": 1}
  assert meta["dedup"]["bytes_hashed"] == sum(f.stat().st_size for f in root.glob("*/n*/*.JPEG"))
  groups = json.loads((root / "report" / "duplicates.json").read_text())["groups"]
  short = {"ilsvrc_train": "train", "ilsvrc_val": "val", "imagenet21k": "w21"}
  got = sorted([f"{short[r]}/{w}/{n}" for r, w, n in g["files"]] for g in groups)  # Files in keep-first order.
  assert got == sorted([["train/n00000011/a1.JPEG", "w21/n00000021/x_leak.JPEG", "w21/n00000022/y_leak.JPEG"],
                        ["train/n00000012/b2.JPEG", "val/n00000012/w_dup.JPEG"],
                        ["w21/n00000021/x3.JPEG", "w21/n00000022/y_dup.JPEG"],
                        ["w21/n00000023/z0.JPEG", "w21/n00000023/z_copy.JPEG"]])
  assert meta["num_images"] == 40  # report only: nothing left out


def test_dedup_drop_leaves_the_extra_copies_out_of_the_index(setup, capsys):
  root, roots = setup
  code = make_splits.main(["--hierarchy", str(root / "hier"), "--ilsvrc_train", str(roots["ilsvrc_train"]),
                           "--ilsvrc_val", str(roots["ilsvrc_val"]), "--imagenet21k", str(roots["imagenet21k"]),
                           "--out", str(root / "drop"), "--dedup", "drop", "--workers", "4"])
  assert code == 0
  out = capsys.readouterr().out
  assert "4 groups of identical images, 5 extra copies, 5 dropped from the index" in out
  assert "1 groups: an ILSVRC-1K image also in an ImageNet-21K folder (train/test leakage)" in out
  ix = imagenet21k.ImageIndex(root / "drop")
  assert len(ix) == 40 - 5 and ix.meta["dedup"]["dropped"] == 5
  every = {str(p.relative_to(root)) for p in root.glob("*/n*/*.JPEG")}
  assert _indexed(ix, root) == every - DROPPED  # The first copy of each group stays (ILSVRC train first).
