"""The 21K manifest: fall-2011 vs winter-2021 class counts per split, from the shipped class lists."""
import json

import pytest

from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import splits
from zsl_jax.projects.hgr.tools import manifest

FALL11 = {"train": 999, "rest": 20842, "p_train": 991, "p_rest": 10230, "hop2": 1549, "hop3": 7860, "hop3_pure": 6311}
WINTER21 = {"train": 999, "rest": 18168, "p_train": 991, "p_rest": 9459, "hop2": 1544, "hop3": 7830, "hop3_pure": 6286}


@pytest.fixture(scope="module")
def lists(shared_data):
  try:
    splits.timm_class_list("fall2011")
  except UserError:
    pytest.skip("timm's class lists are absent (pip install --no-deps timm)")
  im = shared_data / "imagenet"
  return im / "imagenet-testsets.json", im / "winter_2021.txt", im / "imagenet-xml-wnids.json"


def test_manifest_counts_of_the_shipped_lists(lists, tmp_path, capsys):
  testsets, winter21, _ = lists
  out = tmp_path / "m" / "manifest.json"
  assert manifest.main(["--testsets", str(testsets), "--winter21", str(winter21), "--out", str(out)]) == 0
  m = json.loads(out.read_text())
  assert m["release_classes"] == {"fall2011": 21841, "winter2021": 19167, "both": 19167}
  assert (m["only_fall2011"], m["only_winter2021"]) == (2674, 0)
  assert m["p_list_classes"] == {"fall2011": 11221, "winter2021": 10450}
  assert m["counts"] == {"fall2011": FALL11, "winter2021": WINTER21, "both": WINTER21}
  assert set(m["inputs"]) == {"testsets", "winter2021", "fall2011", "p_fall2011", "p_winter2021"}
  assert all(len(v["sha256"]) == 64 for v in m["inputs"].values())
  printed = capsys.readouterr().out.splitlines()
  assert printed[0].split() == ["classes", "fall2011", "winter2021", "both"]
  assert printed[1].split() == ["release", "list", "21,841", "19,167", "19,167"]
  assert printed[3].split() == ["21K-D", "(unseen)", "20,842", "18,168", "18,168"]
  assert printed[5].split() == ["21K-P", "(unseen)", "10,230", "9,459", "9,459"]


def test_manifest_restricted_to_the_graph_matches_the_hierarchy_splits(lists):
  """With the XML WNIDs as the graph, the winter-2021 column equals build_hierarchy's class splits (test_hierarchy)."""
  testsets, winter21, xml_wnids = lists
  m = manifest.manifest(testsets, winter21, universe=xml_wnids)
  assert m["counts"]["winter2021"] == {"train": 999, "rest": 18139, "p_train": 991, "p_rest": 9443, "hop2": 1544,
                                       "hop3": 7830, "hop3_pure": 6286}
  assert m["counts"]["fall2011"]["rest"] == 20813 and m["universe_classes"] == 32295
