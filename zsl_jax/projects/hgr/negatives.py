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
import logging
import math

import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.models.clip import packing

logger = logging.getLogger(__name__)

SAMPLERS = ("topk", "random", "brothers", "near_simi")
METHODS = ("OM", "hierarchical")
NEGATIVES_FROM = ("all", "train_tree")  # hgr.negatives_from: every node (reference) | training classes + ancestors
ROW_TOKENS = 64  # packed prompt rows: about 6 WordNet prompts each; attention cost grows with it, row-end waste falls
CHUNKS_AT_MEDIAN = 12  # automatic chunk size: a median step fills about this many chunks (see prompt_layout)


@dataclasses.dataclass
class Contrasts:
  """One step's contrasts (host numpy, fixed shapes so the jitted step compiles once).

  node_ids:     int32 [G, C]  hierarchy node per column (-1 = padding); column 0 is the positive.
  k_index:      int32 [G]     outer-loop position of the contrast's anchor.
  m_index:      int32 [G]     inner-loop position of the contrast's negative level.
  group_mask:   bool  [G]     real contrasts (the rest is padding).
  outer_depths: int32 [Kmax]  depth of each outer position (-1 = unused), for level weights.
  inner_depths: int32 [Kmax, Mmax] depth of each inner position per anchor (-1 = unused).
  `sample_step` stacks P classes' contrasts slot by slot ([P * G] rows, outer_depths [P, Kmax],
  inner_depths [P, Kmax, Mmax]).
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
    negative_nodes: optional bool [N], the nodes that may be negatives (`hgr.negatives_from`); None: all,
      as the reference, which names unseen classes as negatives (transductive in class names).
  """

  def __init__(self, paths, depth, children, roots, *, out_ratio=0.25, in_ratio=0.5, strategy="topk", k=1,
               num_negatives=256, method="OM", candidates=None, similarity_fn=None, negative_nodes=None):
    if strategy not in SAMPLERS:
      raise UserError(f"hgr.sampler={strategy!r}; use one of {', '.join(SAMPLERS)}")
    if method not in METHODS:
      raise UserError(f"hgr.method={method!r}; use one of {', '.join(METHODS)}")
    self.paths = np.asarray(paths, np.int32)
    self.depth = np.asarray(depth, np.int32)
    self.children = children
    self.roots = np.asarray(roots, np.int32)
    self.out_ratio, self.in_ratio = out_ratio, in_ratio
    self.strategy, self.k, self.num_negatives, self.method = strategy, k, num_negatives, method
    self.candidates = (np.arange(len(self.depth), dtype=np.int32) if candidates is None
                       else np.asarray(candidates, np.int32))
    self.similarity_fn = similarity_fn
    self.negative_nodes = None if negative_nodes is None else np.asarray(negative_nodes, bool)
    max_len = self.paths.shape[1]
    self.nodes_at_depth = [np.flatnonzero(self.depth == d).astype(np.int32) for d in range(max_len)]
    if method == "OM":
      self.k_max = max(1, math.ceil(out_ratio * max_len))
      self.m_max = max(1, math.ceil(in_ratio * max_len))
    else:
      self.k_max, self.m_max = 1, max_len
    self.g_max = self.k_max * self.m_max
    pool = largest_pool(self.depth, k) if strategy == "near_simi" and similarity_fn is None else 0
    if pool > num_negatives:
      raise UserError(f"hgr.sampler='near_simi' ranks up to {pool} nodes by a pretrained text tower's prompt "
                      f"similarities to keep num_negatives={num_negatives}: set --config.init.checkpoint=<CLIP "
                      f"weights or a zsl_jax run>, raise hgr.num_negatives to {pool} (no ranking), or use "
                      "hgr.sampler='topk'")

  def path(self, node):
    row = self.paths[node]
    return row[row >= 0]

  def _pool(self, anchor, level_depth, anchor_path):
    """(key, nodes, excluded): where a contrast's negatives come from, before `excluded` is removed.

    `key` names `nodes` (contrasts with the same key draw from the same nodes), for `step_bound`.
    """
    d, k = level_depth, self.k
    exclude = set(anchor_path.tolist())
    if self.strategy == "topk":
      depths = range(max(0, d - k), d) if d > 0 else [0]
      return ("depths", d), np.concatenate([self.nodes_at_depth[j] for j in depths]), exclude
    if self.strategy == "random":
      return ("all",), self.candidates, {int(anchor)}
    if self.strategy == "brothers":
      parent = -1 if d == 0 else int(anchor_path[d - 1])
      pool = self.roots if d == 0 else np.asarray(self.children[parent], np.int32)
      return ("children", parent), pool, {int(anchor)}  # Siblings may include other ancestors, as in the reference.
    # near_simi: nearest prompts in [d - k, d + k], excluding the path and the anchor's children.
    depths = range(max(0, d - k), min(d + k + 1, len(self.nodes_at_depth)))
    exclude |= set(np.asarray(self.children[anchor], np.int64).tolist())
    return ("near", d), np.concatenate([self.nodes_at_depth[j] for j in depths]), exclude

  def _negatives(self, anchor, level_depth, anchor_path, rng):
    _, pool, exclude = self._pool(anchor, level_depth, anchor_path)
    pool = pool[~np.isin(pool, np.fromiter(exclude, np.int64, len(exclude)))]
    if self.negative_nodes is not None:
      pool = pool[self.negative_nodes[pool]]
    if len(pool) <= self.num_negatives:
      return pool
    if self.strategy == "near_simi":
      sim = np.asarray(self.similarity_fn(int(anchor)))[pool]
      return pool[np.argsort(-sim, kind="stable")[:self.num_negatives]]
    return rng.choice(pool, self.num_negatives, replace=False)

  def _plan(self, label):
    """[(k, m, anchor, anchor path, level depth)] of `label`'s contrasts, outer_depths, inner_depths."""
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
    return plan, outer_depths, inner_depths

  def sample(self, label, rng):
    """All contrasts for a class-pure batch of `label` (numpy Generator `rng` for the draws)."""
    c = self.num_negatives + 1
    node_ids = np.full((self.g_max, c), -1, np.int32)
    k_index = np.zeros(self.g_max, np.int32)
    m_index = np.zeros(self.g_max, np.int32)
    group_mask = np.zeros(self.g_max, bool)
    plan, outer_depths, inner_depths = self._plan(label)
    for g, (kk, mm, anchor, path_a, lvl) in enumerate(plan):
      negatives = self._negatives(anchor, lvl, path_a, rng)
      node_ids[g, 0] = anchor
      node_ids[g, 1:1 + len(negatives)] = negatives
      k_index[g], m_index[g], group_mask[g] = kk, mm, True
    return Contrasts(node_ids, k_index, m_index, group_mask, outer_depths, inner_depths)

  def sample_step(self, labels, rng):
    """The contrasts of a step of P class-pure slots (`labels`, slot order), drawn one slot after another
    from `rng`: [P * G] contrasts in P groups of G, slot by slot; one slot draws what `sample` draws."""
    parts = [self.sample(int(label), rng) for label in labels]
    cat = lambda key: np.concatenate([getattr(c, key) for c in parts])
    stack = lambda key: np.stack([getattr(c, key) for c in parts])
    return Contrasts(cat("node_ids"), cat("k_index"), cat("m_index"), cat("group_mask"), stack("outer_depths"),
                     stack("inner_depths"))

  def step_bound(self, labels, lengths, classes_per_step=1):
    """(prompts, tokens): the most unique prompts, and prompt tokens, that one step of any class in
    `labels` can name, whatever the draws; `lengths` int [N] is each node's prompt length in tokens.

    A contrast whose pool holds at most `num_negatives` nodes names all of them (counted once per
    step); a larger pool adds at most `num_negatives` nodes, at most the longest ones. Pools are
    taken before the anchor's exclusions, which can only raise the bound. Both figures are also
    capped by every node the step's pools can reach. A step of P classes names at most P times a
    class's figures, and at most every node.
    """
    lengths = np.asarray(lengths, np.int64)
    stats = {}  # pool key -> (size, tokens of its num_negatives longest prompts)
    most_prompts = most_tokens = 0
    for label in np.unique(np.asarray(labels)):
      fixed = np.zeros(len(self.depth), bool)
      reach = np.zeros(len(self.depth), bool)
      drawn_n = drawn_t = 0
      seen = set()
      for _, _, anchor, path_a, lvl in self._plan(int(label))[0]:
        key, pool, _ = self._pool(anchor, lvl, path_a)
        fixed[anchor] = True
        if key not in stats:
          drawn = len(pool) > self.num_negatives
          top = np.partition(lengths[pool], len(pool) - self.num_negatives)[-self.num_negatives:] if drawn else ()
          stats[key] = (len(pool), int(np.sum(top)))
        size, top_tokens = stats[key]
        if size <= self.num_negatives:
          fixed[pool] = True
        else:
          drawn_n, drawn_t = drawn_n + self.num_negatives, drawn_t + top_tokens
          if key not in seen:
            reach[pool] = True
            seen.add(key)
      reach |= fixed
      most_prompts = max(most_prompts, min(int(fixed.sum()) + drawn_n, int(reach.sum())))
      most_tokens = max(most_tokens, min(int(lengths[fixed].sum()) + drawn_t, int(lengths[reach].sum())))
    if classes_per_step > 1:
      most_prompts = min(classes_per_step * most_prompts, len(lengths))
      most_tokens = min(classes_per_step * most_tokens, int(lengths.sum()))
    return most_prompts, most_tokens


def largest_pool(depth, k):
  """An upper bound on a near_simi pool: the most nodes at depths [d - k, d + k] for any d. Up to
  `num_negatives`, every node of a pool is a negative and no similarity ranking is needed."""
  sizes = np.bincount(np.asarray(depth)[np.asarray(depth) >= 0])
  return max(int(sizes[max(0, d - k):d + k + 1].sum()) for d in range(len(sizes)))


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


def prompt_lengths(tokens):
  """Tokens up to and including EOT (the largest id) of every prompt [N, L] -> int [N]."""
  return np.argmax(np.asarray(tokens), axis=1) + 1


def prompt_layout(sampler, labels, tokens, devices, chunk_rows=0, seed=0, probe_steps=32, classes_per_step=1):
  """The static packed layout of a step's unique prompts (`packing.Layout`), and what sized it.

  Capacity: the sampler's worst case (`step_bound`) over steps of `classes_per_step` classes of
  `labels`, in rows of ROW_TOKENS tokens (or the longest prompt). Chunk size (`chunk_rows=0`): a multiple of `devices`
  such that the median of `probe_steps` sampled steps fills about CHUNKS_AT_MEDIAN chunks; the
  padding encoded is then about half a chunk, a few % of a step. Measured over 500 paper steps on
  the WordNet hierarchy (benchmarks/hgr_aot.py): fewer, larger chunks pad more; more, smaller ones
  cost more loop iterations (more kernel launches on a GPU).
  """
  lengths = prompt_lengths(tokens)
  longest, shortest = int(lengths.max()), int(lengths.min())
  row_tokens = min(max(ROW_TOKENS, longest), np.asarray(tokens).shape[1])
  most_prompts, most_tokens = sampler.step_bound(labels, lengths, classes_per_step)
  capacity = packing.rows_bound(most_tokens, row_tokens, longest)
  rng = np.random.default_rng([seed, 11])
  used = []
  for step_labels in rng.choice(np.asarray(labels), (probe_steps, classes_per_step)):
    node_ids = sampler.sample_step(step_labels, rng).node_ids
    row_of, _ = packing.assign_rows(lengths[np.unique(node_ids[node_ids >= 0])], row_tokens)
    used.append(int(row_of.max()) + 1)
  if chunk_rows <= 0:
    chunk_rows = devices * max(1, round(float(np.median(used)) / (devices * CHUNKS_AT_MEDIAN)))
  elif chunk_rows % devices:
    raise UserError(f"hgr.prompt_chunk_rows={chunk_rows} is not a multiple of the {devices} devices the "
                    f"prompts are divided over; use a multiple of {devices}, or 0 to size it automatically")
  layout = packing.Layout(row_tokens, row_tokens // shortest, chunk_rows, -(-capacity // chunk_rows))
  info = dict(most_prompts=most_prompts, most_tokens=most_tokens, median_rows=float(np.median(used)))
  logger.info("packed prompts: %d chunks of %d rows x %d tokens (a step names at most %d prompts, %d tokens; "
              "a median step fills %.0f rows), divided over %d devices", layout.chunks, chunk_rows, row_tokens,
              most_prompts, most_tokens, info["median_rows"], devices)
  return layout, info
