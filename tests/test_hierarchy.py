"""Hierarchy: WordNet 3.0 offline loading, XML and WordNet graph sources, real class-split counts."""
import gzip
import json
import pathlib

import numpy as np
import pytest

from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.data import demo as synthetic_imagenet
from zsl_jax.projects.hgr.hierarchy import graph
from zsl_jax.projects.hgr.hierarchy import splits
from zsl_jax.projects.hgr.hierarchy import wordnet
from zsl_jax.projects.hgr.tools import build_hierarchy


@pytest.fixture(scope="module")
def wn():
  return wordnet.load_wordnet()


def test_lexnames_resource_matches_wordnet_man_page():
  rows = (pathlib.Path(wordnet.__file__).parents[1] / "resources" / "lexnames").read_text().splitlines()
  assert len(rows) == 45
  assert rows[0] == "00\tadj.all\t3" and rows[18] == "18\tnoun.person\t1" and rows[44] == "44\tadj.ppl\t3"
  man = pathlib.Path("/usr/share/man/man5/lexnames.5WN.gz")
  if not man.exists():
    pytest.skip("wordnet-base man page not installed")
  text = gzip.open(man, "rt").read()
  for row in rows:
    num, name, _ = row.split("\t")
    assert f"{num}\t{name}" in text.replace(" \t", "\t").replace("  \t", "\t")


def test_wordnet_loads_offline_and_is_cached(wn):
  assert wn.get_version() == "3.0"
  assert wordnet.load_wordnet() is wn
  assert wordnet.class_name(wn, "n02084071") == "dog"
  assert wordnet.class_name(wn, "n01440764") == "tench"
  assert wordnet.class_name(wn, "n02109047") == "great dane"  # underscore -> space
  with pytest.raises(UserError, match="not a WordNet 3.0 noun"):
    wordnet.synset(wn, "n99999999")


def test_missing_wordnet_names_both_remedies(tmp_path, monkeypatch):
  with pytest.raises(UserError, match="apt-get install wordnet-base.*nltk.downloader wordnet"):
    wordnet.find_wordnet(tmp_path)
  monkeypatch.setenv(wordnet.ENV_VAR, str(tmp_path))
  with pytest.raises(UserError, match="ZSL_JAX_WORDNET"):
    wordnet.find_wordnet()
  monkeypatch.delenv(wordnet.ENV_VAR)
  monkeypatch.setattr(wordnet, "DEBIAN_DIR", str(tmp_path / "none"))
  monkeypatch.setattr(wordnet, "_nltk_wordnet", lambda: None)
  with pytest.raises(UserError, match="WordNet 3.0 not found.*apt-get install wordnet-base"):
    wordnet.find_wordnet()


_XML = """<?xml version="1.0" encoding="utf-8"?>
<ImageNetStructure>
<releaseData>fall2011</releaseData>
<synset wnid="fall11" words="ImageNet 2011 Fall Release" gloss="">
  <synset wnid="n00015388" words="animal, animate being" gloss="">
    <synset wnid="n02083346" words="canine, canid" gloss="">
      <synset wnid="n02084071" words="dog, domestic dog" gloss="">
        <synset wnid="n02087122" words="hunting dog" gloss="">
          <synset wnid="n02088364" words="beagle" gloss=""/>
        </synset>
        <synset wnid="n02103406" words="working dog" gloss="">
          <synset wnid="n02109047" words="Great Dane" gloss=""/>
        </synset>
      </synset>
    </synset>
    <synset wnid="n01317541" words="domestic animal" gloss="">
      <synset wnid="n02084071" words="dog, domestic dog" gloss="">
        <synset wnid="n02087122" words="hunting dog" gloss="">
          <synset wnid="n02088364" words="beagle" gloss=""/>
        </synset>
        <synset wnid="n02103406" words="working dog" gloss="">
          <synset wnid="n02109047" words="Great Dane" gloss=""/>
        </synset>
      </synset>
    </synset>
  </synset>
  <synset wnid="fa11misc" words="Misc" gloss="">
    <synset wnid="n09287968" words="geological formation" gloss="">
      <synset wnid="n09246464" words="cliff" gloss=""/>
    </synset>
    <synset wnid="n00021265" words="food, nutrient" gloss="">
      <synset wnid="n07705931" words="edible fruit" gloss="">
        <synset wnid="n07753275" words="pineapple" gloss=""/>
      </synset>
    </synset>
  </synset>
</synset>
</ImageNetStructure>
"""


def test_imagenet_xml_misc_replaced_by_food_and_non_classes_removed(tmp_path):
  xml = tmp_path / "structure_released.xml"
  xml.write_text(_XML)
  g = graph.graph_from_imagenet_xml(xml)
  # fa11misc is gone, its food subtree hangs off the root; the cliff subtree is dropped.
  assert g.children[graph.ROOT] == ["n00015388", "n00021265"]
  assert "fa11misc" not in g and "n09246464" not in g and "n09287968" not in g
  assert g.parents["n02084071"] == ["n02083346", "n01317541"]  # duplicated XML subtree -> one DAG node
  assert len(g.edges()) == len(set(g.edges())) == 12
  classes = ["n02084071", "n02088364", "n02109047", "n07753275", "n09246464"]
  r = g.restrict(classes)
  assert sorted(r.nodes) == sorted(classes[:4])  # cliff only existed under misc
  assert r.children[graph.ROOT] == ["n02084071", "n07753275"]  # animal, canine, food, fruit removed
  assert r.children["n02084071"] == ["n02088364", "n02109047"]  # via the removed hunting/working dog
  h = graph.Hierarchy.from_graph(r, lambda w: g.words[w].split(",")[0])
  assert h.wnids == ["n02084071", "n02088364", "n02109047", "n07753275"]
  assert h.names == ["dog", "beagle", "Great Dane", "pineapple"]
  assert [len(p) for p in h.ancestor_path] == [0, 1, 1, 0]
  np.testing.assert_array_equal(h.path_array(), [[0, -1], [0, 1], [0, 2], [3, -1]])
  assert h.nodes_at_depth == [[0, 3], [1, 2]]
  h.save(tmp_path / "h.json")
  h2 = graph.Hierarchy.load(tmp_path / "h.json")
  assert h2.wnids == h.wnids and h2.ancestor_path == h.ancestor_path and h2.children == h.children


def test_shortest_path_tie_break_is_by_wnid_sequence():
  # d is reachable at distance 2 through b and c; the smaller WNID sequence (a, b) wins whatever the edge order.
  for edges in ([("fall11", "n3"), ("fall11", "n1"), ("n3", "n2"), ("n1", "n2"), ("n2", "n4")],
                [("fall11", "n1"), ("fall11", "n3"), ("n1", "n2"), ("n3", "n2"), ("n2", "n4")]):
    g = graph.Graph(edges)
    h = graph.Hierarchy.from_graph(g, str)
    assert [h.wnids[i] for i in h.ancestor_path[h.index["n4"]]] == ["n1", "n2"]


def test_real_class_split_counts_wordnet_source(shared_data, capsys):
  """WordNet 3.0 hypernyms over the 32,295 XML WNIDs (the reference's XML gives 983 / 17,295)."""
  im = shared_data / "imagenet"
  h, cs, g = build_hierarchy.build("wordnet", im / "imagenet-testsets.json", im / "winter_2021.txt",
                                   universe=im / "imagenet-xml-wnids.json", p_list="timm")
  print(build_hierarchy.report(h, cs))
  counts = splits.split_counts(cs)
  assert len(g.nodes) == 32295 and not g.missing
  assert counts == {"train": 999, "rest": 18139, "all": 19138, "hop2": 1544, "hop3": 7830, "hop3_pure": 6286,
                    "p_train": 991, "p_rest": 9443, "p_all": 10434}
  st = h.stats()
  assert st["num_classes"] == 19138 and st["max_depth"] == 12
  assert st["nodes_per_depth"] == [468, 750, 1826, 3421, 4013, 3178, 2009, 1172, 871, 766, 390, 212, 62]
  assert st["multi_parent_nodes"] == 310
  assert h.wnids[:1] and set(h.wnids) == set(cs["all"])
  # Every consecutive pair on a path is a parent/child edge (the reference's gen_tree assertion).
  for i, path in enumerate(h.ancestor_path):
    chain = path + [i]
    assert all(a in h.parents[b] for a, b in zip(chain, chain[1:]))
    assert not path or path[0] in h.root_children
  assert len(h.shared_names()) == 1255 and "crane" in h.shared_names()
  assert h.meta["truncated_names"] == {"n12141167": "st._augustine_grass.n.01"}
  assert h.names[h.index["n12141167"]] == "st"
  assert "train 999, rest 18,139" in capsys.readouterr().out


def test_demo_tree_is_real_wordnet(wn, tmp_path):
  """The demo's hard-coded names and parent links are WordNet 3.0's (nearest demo ancestors)."""
  for wnid, name, _, _ in synthetic_imagenet.DEMO_TREE:
    assert wordnet.class_name(wn, wnid) == name
  paths = synthetic_imagenet.make_demo(tmp_path, train_per_class=1, val_per_class=1, images_per_class=1, image_size=16)
  universe = json.loads(pathlib.Path(paths["universe"]).read_text())
  classes = [w for w, *_ in synthetic_imagenet.DEMO_TREE]
  hw = graph.Hierarchy.from_graph(graph.graph_from_wordnet(wn, universe).restrict(classes), str)
  hx = graph.Hierarchy.from_graph(graph.graph_from_imagenet_xml(paths["xml"]).restrict(classes), str)
  want = {w: p for w, _, p, _ in synthetic_imagenet.DEMO_TREE}
  for h in (hw, hx):
    got = {w: (h.wnids[h.parents[i][0]] if h.parents[i] else None) for i, w in enumerate(h.wnids)}
    assert got == want and h.stats()["nodes_per_depth"] == [3, 9, 27]


def test_build_hierarchy_cli(tmp_path, capsys):
  p = synthetic_imagenet.make_demo(tmp_path / "demo", train_per_class=1, val_per_class=1, images_per_class=1,
                                   image_size=16)
  common = ["--testsets", p["testsets"], "--winter21", p["winter21"], "--p_list", p["p_list"]]
  assert build_hierarchy.main(["--source", "imagenet_xml", "--out", str(tmp_path / "h")] + common) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--xml" in err[0]
  assert build_hierarchy.main(["--source", "imagenet_xml", "--xml", p["xml"], "--names", "xml",
                               "--out", str(tmp_path / "h")] + common) == 0
  assert "train 18, rest 21, all 39, hop2 9, hop3 18, hop3_pure 9, p_train 18, p_rest 18" in capsys.readouterr().out
  h = graph.Hierarchy.load(tmp_path / "h" / "hierarchy.json")
  assert h.stats()["nodes_per_depth"] == [3, 9, 27] and h.names[:2] == ["dog", "working dog"]
  cs = json.loads((tmp_path / "h" / "class_splits.json").read_text())
  assert cs["counts"]["all"] == 39 and cs["train"] == p["seen"]
