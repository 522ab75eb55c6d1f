"""Which shortest root path a class gets when it has several: our WNID rule or the reference's networkx choice.

The hierarchy is a DAG, so a class can reach the root `fall11` by several shortest paths; its ancestor
path (the loss's anchors, the TOR/POR targets) depends on which one is kept. zsl_jax's default rule
(`wnid`) takes the smallest WNID sequence, whatever the edge order. The reference (`utils.gen_tree`)
calls `networkx.shortest_path(G, 'fall11', node)` on a DiGraph built from its edge list; for an
unweighted graph that is networkx's bidirectional BFS, whose choice depends on the order in which the
edges were inserted. `networkx_path` re-implements that search (no networkx at runtime), and
`splice_restrict` removes the non-class nodes the way the reference's `remove_irrelevant.py` does, so the
edge order matches its procedure too (the reference visits the removed nodes in Python set order, which
changes with PYTHONHASHSEED; here they go in graph order).
"""
import collections
import logging

from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)

ROOT = "fall11"
RULES = ("wnid", "networkx")


def wnid_paths(graph):
  """{node: ancestors root side first (root excluded)}: shortest paths, ties to the smallest WNID sequence."""
  paths, frontier = {}, list(graph.children[ROOT])
  for w in frontier:
    paths[w] = ()
  while frontier:  # BFS by level: a node's first level is its shortest distance.
    nxt = {}
    for u in frontier:
      for c in graph.children[u]:
        if c in paths:
          continue
        cand = paths[u] + (u,)
        if c not in nxt or cand < nxt[c]:
          nxt[c] = cand
    paths.update(nxt)
    frontier = sorted(nxt)
  return paths


def networkx_path(children, parents, source, target):
  """The node list `networkx.shortest_path(G, source, target)` returns for an unweighted DiGraph G.

  `children[u]` / `parents[v]` are G's successor / predecessor lists in insertion order. networkx grows
  a forward BFS from the source (along successors) and a backward BFS from the target (along
  predecessors) one level at a time, expanding the smaller frontier (the forward one on equal sizes),
  and stops at the first node the other search has reached; each search keeps the first node it came
  from. The path is the forward chain to that meeting node, then the backward chain from it.
  """
  if source == target:
    return [source]
  fwd, bwd = {source: None}, {target: None}  # node -> the node the forward / backward search came from
  fwd_front, bwd_front = [source], [target]
  while fwd_front and bwd_front:
    forward = len(fwd_front) <= len(bwd_front)
    front, links, seen, other = (fwd_front, children, fwd, bwd) if forward else (bwd_front, parents, bwd, fwd)
    nxt = []
    for v in front:
      for w in links.get(v, ()):
        if w not in seen:
          seen[w] = v
          nxt.append(w)
        if w in other:
          return _join(fwd, bwd, w)
    if forward:
      fwd_front = nxt
    else:
      bwd_front = nxt
  raise UserError(f"no path from {source} to {target} in the hierarchy graph; rebuild it with build_hierarchy")


def _join(fwd, bwd, meet):
  path, w = [], meet
  while w is not None:
    path.append(w)
    w = fwd[w]
  path.reverse()
  w = bwd[meet]
  while w is not None:
    path.append(w)
    w = bwd[w]
  return path


def networkx_paths(graph):
  """{node: ancestors root side first (root excluded)} as the reference's `gen_tree` computes its `c2p`."""
  return {w: tuple(networkx_path(graph.children, graph.parents, ROOT, w)[1:-1]) for w in graph.nodes}


def paths_for(graph, rule):
  if rule == "wnid":
    return wnid_paths(graph)
  if rule == "networkx":
    return networkx_paths(graph)
  raise UserError(f"unknown tie_break {rule!r}; choose one of {', '.join(RULES)}")


def shortest_path_counts(graph):
  """{node: number of shortest root paths} (a class with more than one is where the rules can differ)."""
  count, dist, frontier = {ROOT: 1}, {ROOT: 0}, [ROOT]
  while frontier:
    nxt = []
    for u in frontier:
      for c in graph.children[u]:
        if c not in dist:
          dist[c], count[c] = dist[u] + 1, 0
          nxt.append(c)
        if dist[c] == dist[u] + 1:
          count[c] += count[u]
    frontier = nxt
  return {w: count[w] for w in graph.nodes if w in count}


def tie_report(graph, chosen):
  """Counts of the classes the tie-break affects: several shortest paths, and a path other than the WNID rule's."""
  counts = shortest_path_counts(graph)
  ref = wnid_paths(graph)
  return {"classes_with_tied_paths": sum(n > 1 for n in counts.values()),
          "paths_differ_from_wnid_rule": sum(tuple(chosen[w]) != tuple(ref[w]) for w in chosen)}


def splice_restrict(graph, keep, order=None):
  """Edges after removing every node outside `keep` as the reference's `remove_irrelevant.py` does.

  Each removed node's edges are deleted and (parent, child) edges for all its parents x children are
  appended (an existing edge keeps its place), one removed node at a time in `order` (default: graph
  order). Returns the edge list in networkx DiGraph order (nodes first-seen, successors by insertion),
  the file `gen_tree` reads; the edge set equals `Graph.restrict`'s, only the order differs.
  """
  keep = set(keep) | {ROOT}
  succ = collections.OrderedDict((u, dict.fromkeys(cs)) for u, cs in graph.children.items())
  pred = {u: dict.fromkeys(graph.parents.get(u, ())) for u in succ}
  for rm in (order if order is not None else graph.nodes):
    if rm in keep or rm not in succ:
      continue
    ps, cs = list(pred.pop(rm)), list(succ.pop(rm))
    for p in ps:
      del succ[p][rm]
    for c in cs:
      del pred[c][rm]
    for p in ps:
      for c in cs:
        succ[p].setdefault(c)
        pred[c].setdefault(p)
  return [(u, v) for u, cs in succ.items() for v in cs]
