"""Class splits and seeded instance splits (zero-shot, low-shot, 21K-P) over folder layouts."""
import json

import numpy as np
import pytest

from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.data import imagenet21k
from zsl_jax.projects.hgr.hierarchy import graph
from zsl_jax.projects.hgr.hierarchy import splits
from zsl_jax.projects.hgr.tools import make_splits

SEEN = ["n00000011", "n00000012"]
UNSEEN = ["n00000021", "n00000022", "n00000023"]
SIZES = {"n00000011": (30, 5), "n00000012": (0, 4), "n00000021": 120, "n00000022": 35, "n00000023": 7}


def test_class_splits_follow_reference_rules():
  testsets = {"train": ["a", "b", "c", "d"], "all": ["e", "f", "g", "h", "a"], "2-hops": ["f", "x"],
              "3-hops": ["e", "f"], "3-hops-pure": ["e"]}
  cs = splits.class_splits(graph_nodes=list("abcefgh"), testsets=testsets, winter21=list("abcefh"), p_list=list("bfh"))
  assert cs["train"] == ["a", "b", "c"]  # d is not in the graph
  assert cs["rest"] == ["e", "f", "h"]  # g not in winter-2021; a already seen
  assert cs["all"] == ["a", "b", "c", "e", "f", "h"]
  assert (cs["hop2"], cs["hop3"], cs["hop3_pure"]) == (["f"], ["e", "f"], ["e"])
  assert (cs["p_train"], cs["p_rest"], cs["p_all"]) == (["b"], ["f", "h"], ["b", "f", "h"])


def test_timm_ships_the_21kp_list():
  wnids = splits.read_wnid_list(splits.timm_21kp_list())
  assert len(wnids) == 10450 and wnids[0].startswith("n")


def _folders(root):
  """Empty files are enough: the index never decodes images."""
  for sub, wnids in (("train", SEEN), ("val", SEEN), ("w21", UNSEEN)):
    for w in wnids:
      n = SIZES[w] if sub == "w21" else SIZES[w][sub == "val"]
      (root / sub / w).mkdir(parents=True)
      for i in range(n):
        (root / sub / w / f"{w}_{i}.JPEG").touch()
      (root / sub / w / "notes.txt").touch()  # not an image: ignored
  return {"ilsvrc_train": root / "train", "ilsvrc_val": root / "val", "imagenet21k": root / "w21"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("splits")
  roots = _folders(root)
  edges = [("fall11", "n00000021"), ("n00000021", "n00000011"), ("n00000021", "n00000012"),
           ("n00000021", "n00000022"), ("fall11", "n00000023")]
  h = graph.Hierarchy.from_graph(graph.Graph(edges), str)
  cs = splits.class_splits(h.wnids, {"train": SEEN, "all": UNSEEN}, h.wnids, p_list=["n00000011", "n00000022"])
  h.save(root / "hier" / "hierarchy.json")
  (root / "hier" / "class_splits.json").write_text(json.dumps(cs))
  metas = {s: make_splits.make(root / "hier", roots, root / f"index{s}", seed=s) for s in (0, 1)}
  return root, h, metas


def _files(d):
  return {f: (d / f).read_bytes() for f in ("names.bin", "offsets.npy", "labels.npy", "roots.npy", "splits.npy")}


def test_splits_identical_for_same_seed_and_differ_for_another(setup, tmp_path):
  root, _, _ = setup
  again = make_splits.make(root / "hier", {"ilsvrc_train": root / "train", "ilsvrc_val": root / "val",
                                          "imagenet21k": root / "w21"}, tmp_path / "again", seed=0)
  assert again["counts"] == setup[2][0]["counts"]
  assert _files(tmp_path / "again") == _files(root / "index0")
  assert _files(root / "index1")["splits.npy"] != _files(root / "index0")["splits.npy"]
  assert _files(root / "index1")["names.bin"] == _files(root / "index0")["names.bin"]
  with pytest.raises(UserError, match="already holds an index"):
    make_splits.make(root / "hier", {}, root / "index0")


def test_zero_shot_and_low_shot_split_rules(setup):
  root, h, metas = setup
  ix = imagenet21k.ImageIndex(root / "index0")
  ix.check_hierarchy(h)
  assert len(ix) == 30 + 5 + 4 + 120 + 35 + 7
  c = metas[0]["counts"]
  assert c["train"] == {"seen_images": 30, "unseen_images": (120 - 50) + (35 - 35) + 0, "seen_classes": 1,
                        "unseen_classes": 1}
  assert c["val"]["unseen_images"] == 50 + 35 + 7 and c["val"]["seen_images"] == 5 + 4
  assert c["test"]["unseen_images"] == 162 and c["test"]["seen_classes"] == 2
  assert c["ls10_train"]["unseen_images"] == 10 + 10 + 7 and c["ls1_train"]["unseen_images"] == 3
  assert c["ls_test"]["unseen_images"] == 110 + 25 and c["ls_val"]["unseen_images"] == 50 + 25
  # Relations between splits, per unseen class.
  for w in UNSEEN:
    sets = {s: set(ix.rows(s, [w]).tolist()) for s in splits.SPLIT_BITS}
    assert sets["val"] <= sets["test"] and not sets["val"] & sets["train"]
    assert sets["val"] | sets["train"] == sets["test"]
    assert sets["ls1_train"] <= sets["ls2_train"] <= sets["ls3_train"] <= sets["ls5_train"] <= sets["ls10_train"]
    assert not sets["ls10_train"] & sets["ls_test"] and sets["ls_val"] <= sets["ls_test"]
    assert sets["ls10_train"] | sets["ls_test"] == sets["test"]
  # Paths and labels: class index in hierarchy order, files sorted, non-images ignored.
  rows = ix.rows("test", "rest")
  assert sorted(set(ix.labels(rows).tolist())) == sorted(h.indices(UNSEEN).tolist())
  first = ix.path(ix.rows("train", "train")[0])
  assert first == str((root / "train" / "n00000011" / "n00000011_0.JPEG").resolve())
  # 21K-P: class filter of the same images.
  assert set(ix.labels(ix.rows("test", "p_rest")).tolist()) == {h.index["n00000022"]}
  with pytest.raises(UserError, match="unknown instance split"):
    ix.rows("bogus")


def test_make_splits_cli_reports_missing_root(setup, tmp_path, capsys):
  root = setup[0]
  code = make_splits.main(["--hierarchy", str(root / "hier"), "--ilsvrc_train", str(tmp_path / "nope"),
                           "--ilsvrc_val", str(root / "val"), "--imagenet21k", str(root / "w21"),
                           "--out", str(tmp_path / "ix")])
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "is not a directory" in err[0]


def test_scan_is_parallel_and_sorted(tmp_path):
  for w in ("n00000001", "n00000002"):
    (tmp_path / w).mkdir()
    for name in ("b.JPEG", "a.jpeg", "c.png", ".hidden.JPEG", "x.txt"):
      (tmp_path / w / name).touch()
  got = splits.scan_class_dirs(tmp_path, ["n00000002", "n00000001", "n00000009"], workers=4)
  assert list(got) == ["n00000002", "n00000001", "n00000009"]
  assert got["n00000001"] == ["a.jpeg", "b.JPEG", "c.png"] and got["n00000009"] is None
  np.testing.assert_equal(len(got), 3)
