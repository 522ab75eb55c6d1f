"""hierarchy tie_break=networkx: the official code's `nx.shortest_path` choice, checked against networkx itself."""
import pytest

from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import graph
from zsl_jax.projects.hgr.hierarchy import tie_break
from zsl_jax.projects.hgr.tools import build_hierarchy

nx = pytest.importorskip("networkx", reason="pip install networkx (test extra) to compare against networkx")


def _nx_graph(edges):
  g = nx.DiGraph()
  g.add_edges_from(edges)
  return g


def _remove_irrelevant(edges, keep):
  """The reference's data/remove_irrelevant.py with networkx, removing nodes in graph order."""
  g = _nx_graph(edges)
  for rm in [n for n in g.nodes if n not in keep and n != graph.ROOT]:
    parents, children = [u for u, _ in g.in_edges(rm)], [v for _, v in g.out_edges(rm)]
    g.remove_node(rm)
    g.add_edges_from([(p, c) for p in parents for c in children])
  return list(g.edges)


def test_small_dag_follows_networkx_not_wnid_order():
  # n4 has several shortest paths; networkx's bidirectional BFS picks by edge insertion order, the wnid rule
  # by the smallest WNID sequence ((n1, n2) in the first graph, where the two differ).
  cases = (([("fall11", "n3"), ("fall11", "n1"), ("n3", "n2"), ("n1", "n2"), ("n2", "n4"), ("n3", "n5"),
             ("n1", "n6"), ("n5", "n4"), ("n6", "n4")], ["n3", "n2"], 2, 2),
           ([("fall11", "n1"), ("fall11", "n3"), ("n1", "n6"), ("n3", "n5"), ("n5", "n4"), ("n6", "n4"),
             ("n1", "n2")], ["n1", "n6"], 1, 0))
  for edges, want, tied, differ in cases:
    g = graph.Graph(edges)
    h = graph.Hierarchy.from_graph(g, str, tie_break="networkx")
    ref = _nx_graph(edges)
    for w in h.wnids:
      assert [h.wnids[a] for a in h.ancestor_path[h.index[w]]] == nx.shortest_path(ref, graph.ROOT, w)[1:-1]
    assert [h.wnids[a] for a in h.ancestor_path[h.index["n4"]]] == want
    assert h.meta["tie_break_counts"] == {"classes_with_tied_paths": tied,
                                          "paths_differ_from_wnid_rule": differ}
    wnid = graph.Hierarchy.from_graph(g, str)
    assert wnid.meta["tie_break"] == "wnid" and wnid.meta["tie_break_counts"]["paths_differ_from_wnid_rule"] == 0
  with pytest.raises(UserError, match="unknown tie_break"):
    graph.Hierarchy.from_graph(g, str, tie_break="bfs")


def test_real_hierarchy_matches_networkx_on_every_class(shared_data):
  """The 19,138-class WordNet-source hierarchy: same edges as remove_irrelevant.py, same path as nx for all."""
  im = shared_data / "imagenet"
  h, cs, g = build_hierarchy.build("wordnet", im / "imagenet-testsets.json", im / "winter_2021.txt",
                                   universe=im / "imagenet-xml-wnids.json", tie_break="networkx")
  # The non-class removal leaves remove_irrelevant.py's edge order (checked on a graph whose order is its edge list).
  assert tie_break.splice_restrict(graph.Graph(g.edges()), cs["all"]) == _remove_irrelevant(g.edges(), set(cs["all"]))
  edges = tie_break.splice_restrict(g, cs["all"])  # What build() used.
  assert set(edges) == set(g.restrict(cs["all"]).edges())
  ref = _nx_graph(edges)
  mine = tie_break.networkx_paths(graph.Graph(edges))
  assert len(h) == len(mine) == 19138
  for i, w in enumerate(h.wnids):
    want = nx.shortest_path(ref, graph.ROOT, w)[1:-1]
    assert list(mine[w]) == want and [h.wnids[a] for a in h.ancestor_path[i]] == want, w
  assert h.meta["tie_break_counts"] == {"classes_with_tied_paths": 815, "paths_differ_from_wnid_rule": 34}
  assert ("tie_break networkx: 815 classes have several shortest root paths; 34 get a different path than the "
          "wnid rule's") in build_hierarchy.report(h, cs)
