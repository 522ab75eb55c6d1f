"""HGR-Net's hierarchical contrastive ("OM") loss, batched into one text-tower call per step.

The reference loops over outer anchors a_k (the label and its first ancestors) and, for each,
over inner levels p_m of a_k's path; every (k, m) pair is a contrast between the image batch and
a_k's prompt plus up to 256 negatives sampled around depth(p_m), re-running the text tower each
time. Here the host samples every contrast of a step at once (seeded numpy, `ContrastSampler`),
the trainer encodes the unique prompts once, and `om_loss` scores all contrasts as one
[G, B, C] tensor with masks. The sum of weighted, masked cross-entropies is the reference's loss.

Conventions: a class path P(a) is root side first and includes a (`paths[a]`, -1 padded), so
P(a)[d] is a's ancestor at depth d. In a contrast row, column 0 is the positive (the outer anchor).
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax.errors import UserError

SCHEMES = ("equal", "increasing", "decreasing", "nl_increasing", "nl_decreasing", "adaptive",
           "adaptive_frozen", "inverse_count")
SAMPLERS = ("topk", "random", "brothers", "near_simi")
METHODS = ("OM", "hierarchical")
_MASKED = -1e9


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
  """Host-side negative sampling over a class hierarchy (spec §2.5-2.8, with the zsl_jax fixes).

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


# --------------------------------------------------------------------------- level weights
def loop_weights(scheme, depths, theta=None, level_counts=None, index_by="depth"):
  """Weights of one loop's positions (spec §2.7); `depths` int [..., n_max] with -1 padding.

  Position i = 0 is the first level of the loop (the finest in OM's loops). `adaptive` is
  softmax_i(100 ** theta[idx_i]) with idx = the level's depth (zsl_jax) or its loop position
  (`index_by="loop_position"`, the reference); `inverse_count` is (1/N_d) / sum(1/N_d').
  """
  mask = depths >= 0
  dtype = jnp.result_type(float)  # float64 under jax.enable_x64 (reference checks), else float32.
  maskf = mask.astype(dtype)
  pos = jnp.arange(depths.shape[-1], dtype=dtype)
  n = maskf.sum(-1, keepdims=True)
  if scheme == "equal":
    raw = jnp.ones_like(maskf)
  elif scheme == "increasing":
    raw = pos + 1
  elif scheme == "decreasing":
    raw = n - pos
  elif scheme == "nl_increasing":
    raw = (pos + 1) ** 3
  elif scheme == "nl_decreasing":
    raw = (n - pos) ** 3
  elif scheme in ("adaptive", "adaptive_frozen"):
    idx = jnp.maximum(depths, 0) if index_by == "depth" else jnp.broadcast_to(
        jnp.arange(depths.shape[-1]), depths.shape)
    th = theta if scheme == "adaptive" else jax.lax.stop_gradient(theta)
    logits = jnp.where(mask, 100.0 ** th[idx], -jnp.inf)
    return jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)
  elif scheme == "inverse_count":
    raw = 1.0 / jnp.asarray(level_counts, dtype)[jnp.maximum(depths, 0)]
  else:
    raise UserError(f"hgr.level_weights={scheme!r}; use one of {', '.join(SCHEMES)}")
  raw = jnp.broadcast_to(raw, maskf.shape) * maskf
  return raw / jnp.maximum(raw.sum(-1, keepdims=True), 1e-30)


def init_theta(level_counts, scale=1.0):
  """Adaptive-weight logits θ_d = scale / N_d (near-uniform start, as the reference)."""
  counts = np.maximum(np.asarray(level_counts, np.float32), 1.0)
  return jnp.asarray(scale / counts, jnp.float32)


def contrast_weights(scheme, contrasts, theta=None, level_counts=None, weighting="both", index_by="depth"):
  """w_out[k] * w_in[k, m] for every contrast [G]; `weighting` in|out makes the other loop equal."""
  out_scheme = scheme if weighting in ("both", "out") else "equal"
  in_scheme = scheme if weighting in ("both", "in") else "equal"
  w_out = loop_weights(out_scheme, contrasts["outer_depths"], theta, level_counts, index_by)  # [K]
  w_in = loop_weights(in_scheme, contrasts["inner_depths"], theta, level_counts, index_by)   # [K, M]
  w = w_out[contrasts["k_index"]] * w_in[contrasts["k_index"], contrasts["m_index"]]
  return jnp.where(contrasts["group_mask"], w, 0.0)


# --------------------------------------------------------------------------- the loss
def om_loss(image_features, prompt_features, columns, weights, logit_scale, example_mask=None):
  """Sum over contrasts of weight * mean-over-images cross-entropy with the positive in column 0.

  Args:
    image_features: [B, D] L2-normalised.
    prompt_features: [U, D] L2-normalised embeddings of the step's unique prompts.
    columns: int32 [G, C] index into prompt_features, -1 = padding.
    weights: [G] contrast weights (0 for padding contrasts).
    logit_scale: log of the temperature multiplier (CLIP's parameter), scalar.
    example_mask: bool [B] real images of a padded batch.
  Returns:
    (loss, per-contrast mean cross-entropy [G]).
  """
  valid = columns >= 0                                                   # [G, C]
  text = prompt_features[jnp.maximum(columns, 0)]                        # [G, C, D]
  logits = jnp.exp(logit_scale) * jnp.einsum("bd,gcd->gbc", image_features, text)  # [G, B, C]
  # A finite fill (not -inf) keeps all-padding rows free of NaN values and NaN gradients.
  logits = jnp.where(valid[:, None, :], logits, _MASKED)
  ce = jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]                # [G, B]
  if example_mask is None:
    per_contrast = ce.mean(-1)
  else:
    m = example_mask.astype(ce.dtype)
    per_contrast = (ce * m).sum(-1) / jnp.maximum(m.sum(), 1.0)
  per_contrast = jnp.where(weights > 0, per_contrast, 0.0)
  return jnp.sum(weights * per_contrast), per_contrast
