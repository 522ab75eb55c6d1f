"""The class hierarchy HGR-Net trains against, from ImageNet's XML or from WordNet 3.0.

HGR-Net's loss walks each class's ancestor path, so the hierarchy defines the training signal.
The reference builds it from ImageNet's fall-2011 `structure_released.xml` (its `misc` subtree
replaced by the food subtree inside it), then removes every node that is not a class, linking
each removed node's parents to its children. Users without the XML can rebuild the graph from
WordNet 3.0 hypernyms restricted to a WNID universe. Both give a DAG rooted at a synthetic
`fall11`; `Hierarchy` fixes one shortest ancestor path per class with a deterministic tie-break
(smallest WNID sequence, or the reference's networkx choice: `tie_break.py`), so every run and every
host sees the same paths.
"""
import collections
import json
import pathlib
import xml.etree.ElementTree as ET

import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import tie_break as tie_break_lib
from zsl_jax.projects.hgr.hierarchy import wordnet

ROOT = tie_break_lib.ROOT  # "fall11"
MISC = "fa11misc"
FOOD = "n00021265"  # "food, nutrient": the one subtree of `misc` the reference keeps.


class Graph:
  """Ordered DAG: `children[u]` lists u's children in first-seen order; `ROOT` is the root."""

  def __init__(self, edges):
    self.words, self.missing = {}, []
    self.children = collections.OrderedDict()
    self.parents = collections.defaultdict(list)
    self.children[ROOT] = []
    seen = set()
    for u, v in edges:
      if (u, v) in seen or u == v:
        continue
      seen.add((u, v))
      self.children.setdefault(u, []).append(v)
      self.children.setdefault(v, [])
      self.parents[v].append(u)

  @property
  def nodes(self):
    """Every node except the root, in first-seen order."""
    return [n for n in self.children if n != ROOT]

  def edges(self):
    return [(u, v) for u, cs in self.children.items() for v in cs]

  def __contains__(self, wnid):
    return wnid in self.children

  def restrict(self, keep):
    """Keeps `keep` ∩ nodes (+ root); each removed node's parents are linked to its children."""
    keep = set(keep) | {ROOT}
    reach = {}

    def kept_below(x):  # Kept nodes reachable from removed node x through removed nodes only.
      if x not in reach:
        reach[x] = []  # The graph is a DAG; the placeholder only guards malformed input.
        out = []
        for c in self.children[x]:
          out.extend([c] if c in keep else kept_below(c))
        reach[x] = list(dict.fromkeys(out))
      return reach[x]

    edges = []
    for u in self.children:
      if u in keep:
        for c in self.children[u]:
          edges.extend((u, k) for k in ([c] if c in keep else kept_below(c)))
    # Kept nodes with no kept ancestor still hang off the root (reference: ≈170 at depth 0).
    out = Graph(edges)
    out.words, out.missing = self.words, self.missing
    for u in self.children:  # Unreachable only in malformed input; never lose a class.
      if u in keep and u != ROOT and u not in out:
        out.children[ROOT].append(u)
        out.children[u] = []
        out.parents[u].append(ROOT)
    return out

  def save_edges(self, path):
    pathlib.Path(path).write_text(json.dumps(self.edges()))


def _xml_root_synset(tree):
  root = tree.getroot()
  for child in root:
    if child.get("wnid") == ROOT:
      return child
  if len(root) > 1 and root[1].tag == "synset":  # The reference's `root[1]`.
    return root[1]
  raise UserError(f"no <synset wnid=\"{ROOT}\"> under the XML root: not ImageNet's structure_released.xml; "
                  "pass the fall-2011 structure file or use --source wordnet")


def graph_from_imagenet_xml(path, replace_misc=True):
  """ImageNet fall-2011 `structure_released.xml` -> Graph, as the reference's hierarchical.py.

  The `fa11misc` subtree is replaced by the food subtree (`n00021265`) found inside it; one
  (parent, child) edge per XML nesting, duplicates skipped (a synset listed under several parents
  becomes a multi-parent node). `graph.words` keeps each synset's XML `words` attribute.
  """
  try:
    tree = ET.parse(path)
  except (OSError, ET.ParseError) as e:
    raise UserError(f"cannot parse the ImageNet structure XML {path}: {e}; pass structure_released.xml") from e
  top = _xml_root_synset(tree)
  if replace_misc:
    misc = next((c for c in top if c.get("wnid") == MISC), None)
    if misc is not None:
      food = next((e for e in misc.iter("synset") if e.get("wnid") == FOOD), None)
      top.remove(misc)
      if food is not None:
        top.append(food)
  edges, words = [], {}
  stack = [(ROOT, c) for c in reversed(list(top))]
  while stack:  # Iterative pre-order DFS in document order.
    parent, el = stack.pop()
    if el.tag != "synset":
      continue
    wnid = el.get("wnid")
    edges.append((parent, wnid))
    words.setdefault(wnid, el.get("words", ""))
    stack.extend((wnid, c) for c in reversed(list(el)))
  g = Graph(edges)
  g.words = words
  return g


def graph_from_wordnet(wn, universe):
  """WordNet 3.0 hypernym (and instance-hypernym) DAG restricted to the WNIDs in `universe`.

  A universe node's parents are its nearest hypernyms inside the universe (walking through
  hypernyms outside it); nodes without any hang off the root. Children are in WNID order.
  WNIDs that are not WordNet 3.0 nouns are skipped (`graph.missing` lists them).
  """
  universe = sorted(set(universe))
  uset = set(universe)
  near = {}

  def nearest(s):  # Universe WNIDs among s's hypernym closure, stopping at the first hit per path.
    key = s.offset()
    if key not in near:
      out = []
      for h in s.hypernyms() + s.instance_hypernyms():
        w = wordnet.wnid_of(h)
        out.extend([w] if w in uset else nearest(h))
      near[key] = sorted(set(out))
    return near[key]

  edges, missing = [], []
  for w in universe:
    try:
      s = wordnet.synset(wn, w)
    except UserError:
      missing.append(w)
      continue
    parents = nearest(s)
    edges.extend((p, w) for p in parents) if parents else edges.append((ROOT, w))
  edges.sort(key=lambda e: (e[0] != ROOT, e[0], e[1]))
  g = Graph(edges)
  g.missing = missing
  return g


class Hierarchy:
  """Class hierarchy with one ancestor path per class; node order = class index.

  Attributes:
    wnids: [N] WNIDs; names: [N] class names (reference rule, see `wordnet.class_name`).
    parents, children: per node, indices in the (class-only) DAG, the synthetic root excluded.
    root_children: nodes that have the root among their parents (depth 0 ones and others).
    ancestor_path: per node, ancestors on one shortest root path, root side first, root and node
      excluded (the reference's `c2p`); depth[i] = len(ancestor_path[i]).
    nodes_at_depth: [max_depth + 1] lists of node indices (the reference's `d2n`, sorted by depth).
  """

  def __init__(self, wnids, names, parents, ancestor_path, meta=None, root_children=None):
    self.wnids = list(wnids)
    self.names = list(names)
    self.parents = [list(p) for p in parents]
    self.ancestor_path = [list(p) for p in ancestor_path]
    self.meta = dict(meta or {})
    self.index = {w: i for i, w in enumerate(self.wnids)}
    self.children = [[] for _ in self.wnids]
    for i, ps in enumerate(self.parents):
      for p in ps:
        self.children[p].append(i)
    self.depth = np.array([len(p) for p in self.ancestor_path], np.int32)  # [N]
    self.nodes_at_depth = [np.flatnonzero(self.depth == d).tolist() for d in range(int(self.depth.max(initial=-1)) + 1)]
    if root_children is None:
      root_children = [i for i, p in enumerate(self.parents) if not p]
    self.root_children = list(root_children)  # Nodes with the root among their parents.

  def __len__(self):
    return len(self.wnids)

  @property
  def max_depth(self):
    return len(self.nodes_at_depth) - 1

  def path_array(self):
    """[N, max_depth + 1] int32: ancestors root side first, then the node itself, -1 padded."""
    out = np.full((len(self), self.max_depth + 1), -1, np.int32)
    for i, p in enumerate(self.ancestor_path):
      out[i, :len(p) + 1] = p + [i]
    return out

  def indices(self, wnids):
    """WNIDs -> int32 class indices (UserError naming the first unknown one)."""
    try:
      return np.array([self.index[w] for w in wnids], np.int32)
    except KeyError as e:
      raise UserError(f"class {e.args[0]} is not in the hierarchy; rebuild it with the same class lists") from e

  def shared_names(self):
    """{name: [wnid, ...]} for names used by more than one class (identical prompts)."""
    by = collections.defaultdict(list)
    for w, n in zip(self.wnids, self.names):
      by[n].append(w)
    return {n: ws for n, ws in sorted(by.items()) if len(ws) > 1}

  def stats(self):
    rc = set(self.root_children)
    return {"num_classes": len(self), "max_depth": self.max_depth,
            "nodes_per_depth": [len(n) for n in self.nodes_at_depth],
            "multi_parent_nodes": int(sum(len(p) + (i in rc) > 1 for i, p in enumerate(self.parents))),
            "root_children": len(self.root_children), "shared_names": len(self.shared_names())}

  @classmethod
  def from_graph(cls, graph, names_fn, meta=None, tie_break="wnid"):
    """Fixes one shortest root path per node; `tie_break` picks among several (`tie_break.RULES`)."""
    nodes = _preorder(graph)
    index = {w: i for i, w in enumerate(nodes)}
    parents = [[index[p] for p in graph.parents[w] if p != ROOT] for w in nodes]
    paths = tie_break_lib.paths_for(graph, tie_break)
    ancestor_path = [[index[a] for a in paths[w]] for w in nodes]
    meta = dict(meta or {}, tie_break=tie_break, tie_break_counts=tie_break_lib.tie_report(graph, paths))
    return cls(nodes, [names_fn(w) for w in nodes], parents, ancestor_path, meta,
               [index[w] for w in graph.children[ROOT]])

  def save(self, path):
    """One JSON file: node order, names, parents, ancestor paths and build metadata."""
    data = {"format": "zsl_jax.hierarchy/1", "wnids": self.wnids, "names": self.names, "parents": self.parents,
            "ancestor_path": self.ancestor_path, "root_children": self.root_children, "meta": self.meta,
            "stats": self.stats()}
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_text(json.dumps(data))

  @classmethod
  def load(cls, path):
    try:
      data = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
      raise UserError(f"cannot read hierarchy {path}: {e}; "
                      "build it with python -m zsl_jax.tools.build_hierarchy") from e
    if data.get("format") != "zsl_jax.hierarchy/1":
      raise UserError(f"{path} is not a zsl_jax hierarchy file; build it with python -m zsl_jax.tools.build_hierarchy")
    return cls(data["wnids"], data["names"], data["parents"], data["ancestor_path"], data.get("meta"),
               data.get("root_children"))


def _preorder(graph):
  """Nodes in DFS pre-order from the root, children in graph order (the class index order)."""
  order, seen = [], set()
  stack = list(reversed(graph.children[ROOT]))
  while stack:
    w = stack.pop()
    if w in seen:
      continue
    seen.add(w)
    order.append(w)
    stack.extend(reversed(graph.children[w]))
  return order
