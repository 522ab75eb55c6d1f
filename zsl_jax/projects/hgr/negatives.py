"""HGR-Net's contrasts of one step, sampled on the host: anchors, inner levels and their negatives.

For a class y the reference takes outer anchors a_k (y and its first ancestors, ratio K) and, for
each, inner levels p_m of a_k's path (ratio M); every (k, m) pair contrasts the image batch with
a_k's prompt and up to `num_negatives` nodes sampled around depth(p_m) by one of the strategies
below (the official `tree_model.get_contra`). Sampling is seeded numpy, a pure function of (seed,
step), so a resumed run draws the same negatives and every host computes the same contrasts without
talking to the others. `dedupe_prompts` then reduces a step to its unique prompts, encoded once on
device.
"""
import dataclasses
import math

import numpy as np

from zsl_jax.errors import UserError

SAMPLERS = ("topk", "random", "brothers", "near_simi")
METHODS = ("OM", "hierarchical")


@dataclasses.dataclass
class Contrasts:
  """One step's contrasts (host numpy, fixed shapes so the jitted step compiles once).

  node_ids:     int32 [G, C]  hierarchy node per column (-1 = padding); column 0 is the positive.
  k_index:      int32 [G]     outer-loop position of the contrast's anchor.
  m_index:      int32 [G]     inner-loop position of the contrast's negative level.
  group_mask:   bool  [G]     real contrasts (the rest is padding).
  outer_depths: int32 [Kmax]  depth of each outer position (-1 = unused), for level weights.
  inner_depths: int32 [Kmax, Mmax] depth of each inner position per anchor (-1 = unused).
  """
  node_ids: np.ndarray
  k_index: np.ndarray
  m_index: np.ndarray
  group_mask: np.ndarray
  outer_depths: np.ndarray
  inner_depths: np.ndarray


class ContrastSampler:
  """Host-side negative sampling over a class hierarchy (the official `tree_model.py`, with the zsl_jax fixes).

  Args:
    paths: int32 [N, Lmax] root-first path of every node including itself, -1 padded.
    depth: int32 [N] (= path length - 1).
    children: list of int arrays, children of every node (for `brothers`).
    roots: int array, the depth-0 nodes.
    out_ratio, in_ratio: K and M of the paper (fractions of the path used as anchors / levels).
    strategy: topk | random | brothers | near_simi.
    k: levels above a node that topk / near_simi draw from.
    num_negatives: at most this many negatives per contrast (256 in the paper).
    method: OM (outer x inner loops) | hierarchical (single loop over the label's path).
    candidates: int array of nodes the `random` sampler draws from (default: every node).
    similarity_fn: node -> similarity to every node [N] (near_simi ranks by it).
  """

  def __init__(self, paths, depth, children, roots, *, out_ratio=0.25, in_ratio=0.5, strategy="topk", k=1,
               num_negatives=256, method="OM", candidates=None, similarity_fn=None):
    if strategy not in SAMPLERS:
      raise UserError(f"hgr.sampler={strategy!r}; use one of {', '.join(SAMPLERS)}")
    if method not in METHODS:
      raise UserError(f"hgr.method={method!r}; use one of {', '.join(METHODS)}")
    if strategy == "near_simi" and similarity_fn is None:
      raise UserError("the near_simi sampler needs prompt similarities; use hgr.sampler='topk' or give them")
    self.paths = np.asarray(paths, np.int32)
    self.depth = np.asarray(depth, np.int32)
    self.children = children
    self.roots = np.asarray(roots, np.int32)
    self.out_ratio, self.in_ratio = out_ratio, in_ratio
    self.strategy, self.k, self.num_negatives, self.method = strategy, k, num_negatives, method
    self.candidates = (np.arange(len(self.depth), dtype=np.int32) if candidates is None
                       else np.asarray(candidates, np.int32))
    self.similarity_fn = similarity_fn
    max_len = self.paths.shape[1]
    self.nodes_at_depth = [np.flatnonzero(self.depth == d).astype(np.int32) for d in range(max_len)]
    if method == "OM":
      self.k_max = max(1, math.ceil(out_ratio * max_len))
      self.m_max = max(1, math.ceil(in_ratio * max_len))
    else:
      self.k_max, self.m_max = 1, max_len
    self.g_max = self.k_max * self.m_max

  def path(self, node):
    row = self.paths[node]
    return row[row >= 0]

  def _negatives(self, anchor, level_depth, anchor_path, rng):
    d, k = level_depth, self.k
    exclude = set(anchor_path.tolist())
    if self.strategy == "topk":
      depths = range(max(0, d - k), d) if d > 0 else [0]
      pool = np.concatenate([self.nodes_at_depth[j] for j in depths])
    elif self.strategy == "random":
      pool, exclude = self.candidates, {int(anchor)}
    elif self.strategy == "brothers":
      pool = self.roots if d == 0 else np.asarray(self.children[anchor_path[d - 1]], np.int32)
      exclude = {int(anchor)}  # Siblings may include other ancestors of the anchor, as in the reference.
    else:  # near_simi: nearest prompts in [d - k, d + k], excluding the path and the anchor's children.
      depths = range(max(0, d - k), min(d + k + 1, len(self.nodes_at_depth)))
      pool = np.concatenate([self.nodes_at_depth[j] for j in depths])
      exclude |= set(np.asarray(self.children[anchor], np.int64).tolist())
    pool = pool[~np.isin(pool, np.fromiter(exclude, np.int64, len(exclude)))]
    if len(pool) <= self.num_negatives:
      return pool
    if self.strategy == "near_simi":
      sim = np.asarray(self.similarity_fn(int(anchor)))[pool]
      return pool[np.argsort(-sim, kind="stable")[:self.num_negatives]]
    return rng.choice(pool, self.num_negatives, replace=False)

  def sample(self, label, rng):
    """All contrasts for a class-pure batch of `label` (numpy Generator `rng` for the draws)."""
    c = self.num_negatives + 1
    node_ids = np.full((self.g_max, c), -1, np.int32)
    k_index = np.zeros(self.g_max, np.int32)
    m_index = np.zeros(self.g_max, np.int32)
    group_mask = np.zeros(self.g_max, bool)
    outer_depths = np.full(self.k_max, -1, np.int32)
    inner_depths = np.full((self.k_max, self.m_max), -1, np.int32)
    path_y = self.path(label)
    if self.method == "OM":
      # Outer anchors: the label, then its ancestors, fine -> coarse.
      n_out = max(1, math.ceil(self.out_ratio * len(path_y)))
      plan = []
      for kk, anchor in enumerate(path_y[::-1][:n_out]):
        path_a = self.path(anchor)
        n_in = max(1, math.ceil(self.in_ratio * len(path_a)))
        outer_depths[kk] = len(path_a) - 1
        levels = [len(path_a) - 1 - mm for mm in range(n_in)]  # Depths of a, parent(a), ...
        inner_depths[kk, :n_in] = levels
        plan += [(kk, mm, anchor, path_a, lvl) for mm, lvl in enumerate(levels)]
    else:
      # Single loop: positive always the label, negatives at every depth of its path, root first.
      outer_depths[0] = len(path_y) - 1
      inner_depths[0, :len(path_y)] = np.arange(len(path_y))
      plan = [(0, j, label, path_y, j) for j in range(len(path_y))]
    for g, (kk, mm, anchor, path_a, lvl) in enumerate(plan):
      negatives = self._negatives(anchor, lvl, path_a, rng)
      node_ids[g, 0] = anchor
      node_ids[g, 1:1 + len(negatives)] = negatives
      k_index[g], m_index[g], group_mask[g] = kk, mm, True
    return Contrasts(node_ids, k_index, m_index, group_mask, outer_depths, inner_depths)


def dedupe_prompts(node_ids, multiple=64):
  """Unique nodes of a step and each column's index into them, padded to a bucket size.

  Returns (unique_nodes int32 [U] padded with the first node, columns int32 [G, C] with -1 kept
  for padding, num_unique). Bucketing U keeps the number of compiled shapes small.
  """
  valid = node_ids >= 0
  unique, inverse = np.unique(node_ids[valid], return_inverse=True)
  size = max(multiple, int(math.ceil(len(unique) / multiple) * multiple))
  padded = np.full(size, unique[0] if len(unique) else 0, np.int32)
  padded[:len(unique)] = unique
  columns = np.full(node_ids.shape, -1, np.int32)
  columns[valid] = inverse
  return padded, columns, len(unique)
