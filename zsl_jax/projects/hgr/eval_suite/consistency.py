"""Hierarchical-consistency metrics beside Hit@k / TOR / POR, as integer counts on device.

The tree is the hierarchy with each node's one fixed shortest ancestor path (`Hierarchy.path_array`):
a node's parent is the last ancestor on its path, the synthetic root sits above depth 0. Only the
nodes of `all_classes` can be predicted (as for TOR / POR). For an image of class y with root-first
path P(y) = (a_0, ..., a_{L-1} = y) and scores s(x, c) over the nodes:

  HCA  hierarchical consistent accuracy (ProTeCt, Wu et al., CVPR 2024, Sec. 3): an image counts
       only if the flat classifier is right AND every node classifier on its path is right,
         HCA = (1/n) sum_i [y^(x_i) = y_i] prod_{a in P(y_i)} [argmax_{c in children(parent(a))} s(x_i, c) = a],
       the flat prediction y^ being Hit@1's (top-1 over the test classes) and each node classifier
       choosing among the children of the path's previous node (the root's children first).
  MTA  mean tree-cut accuracy (ProTeCt, Sec. 3): a tree cut collapses some internal nodes into
       leaves; the leaves of the pruned tree are the label set, one node on every root-to-leaf path.
       A cut's accuracy is top-1 accuracy over its label set, each image's label mapped to the cut's
       node on its path; MTA is the mean over C cuts. Cuts are sampled as ProTeCt's
       `sample_treecuts.py --multi` does: every internal node is collapsed with probability r (the
       root never), C/5 distinct cuts for each r in (0.9, 0.7, 0.5, 0.3, 0.1), from one seed.
       21K-D also tests internal classes: an image whose class lies above a cut (no cut node on its
       path) has no label in that cut's set and is left out of that cut's accuracy.
  mistake severity  (Bertinetto et al., "Making Better Mistakes", CVPR 2020, Sec. 2): over the images
       whose Hit@1 prediction is wrong, the mean depth of the lowest common ancestor (LCA) of
       prediction and truth, and its histogram. The paper reports the LCA's *height* in trees whose
       leaves all lie at one depth, where height = leaf depth - LCA depth; WordNet's leaves lie at
       many depths and 21K-D tests internal classes, so "height" has no single meaning here. We report
       the LCA's depth counted from the synthetic root (root 0, its children 1, ...): the number of
       ancestors prediction and truth share. Higher means a milder mistake.
  per-depth accuracy  at each depth d, over images whose path reaches d: the share whose top-1 among
       the nodes at depth d is their path's node (POR's ingredients; POR averages them per image).

Every count is an int32 sum over the batch's unmasked images, so batches and hosts add up exactly
(`metrics.count_batch` returns them with its own; `metrics.from_counts` divides).
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

CUT_RATES = (0.9, 0.7, 0.5, 0.3, 0.1)  # ProTeCt's dropout rates, in the order it samples them
_TRIES_PER_CUT = 200                    # draws allowed per wanted cut before accepting fewer distinct cuts


def tree_parents(paths):
  """[N] each node's parent on its fixed path (-1 under the synthetic root) from `path_array()` [N, L]."""
  paths = np.asarray(paths)
  depth = (paths >= 0).sum(1) - 1
  return np.where(depth > 0, paths[np.arange(len(paths)), np.maximum(depth - 1, 0)], -1).astype(np.int32)


def parent_groups(paths, in_all):
  """[N] the group of each node's classifier: its parent (N for the root), N + 1 for nodes never predicted."""
  n = len(paths)
  parent = tree_parents(paths)
  return np.where(in_all, np.where(parent >= 0, parent, n), n + 1).astype(np.int32)


def _one_cut(paths, internal, rate, rng):
  """[N] bool: a random tree cut; each internal node expands with probability 1 - rate, the root always."""
  n, max_len = paths.shape
  expanded = np.append(rng.random(n) >= rate, True)        # index -1 (padding) reads True
  depth = (paths >= 0).sum(1) - 1
  ancestors = np.arange(max_len)[None, :] < depth[:, None]  # [N, L] positions holding strict ancestors
  open_ = np.where(ancestors, expanded[paths], True).all(1)   # every ancestor expanded: the node is reached
  return open_ & (~expanded[:n] | ~internal)


def sample_tree_cuts(paths, count, seed, rates=CUT_RATES):
  """[C, N] bool: `count` distinct random tree cuts, `count / len(rates)` per dropout rate (ProTeCt's
  `--multi` sampler), reproducible from `seed`. Small trees may hold fewer distinct cuts; then fewer return."""
  paths = np.asarray(paths)
  n = len(paths)
  internal = np.zeros(n, bool)
  parent = tree_parents(paths)
  internal[parent[parent >= 0]] = True
  rng = np.random.default_rng(seed)
  cuts, seen = [], set()
  for i, rate in enumerate(rates):
    want = (i + 1) * count // len(rates) - i * count // len(rates)
    for _ in range(want * _TRIES_PER_CUT):
      if not want:
        break
      cut = _one_cut(paths, internal, rate, rng)
      key = np.flatnonzero(cut).tobytes()
      if key not in seen:
        seen.add(key)
        cuts.append(cut)
        want -= 1
  if len(cuts) < count:
    logger.info("the tree holds only %d distinct tree cuts of the %d asked for MTA", len(cuts), count)
  return np.stack(cuts) if cuts else np.zeros((0, n), bool)


def group_argmax(scores, group, num_groups):
  """[b, G] per group of nodes, the first node with the highest score (argmax's tie rule; a large sentinel
  for an empty group). O(b N) memory, where masking the scores per group would take O(b G N)."""
  n = scores.shape[1]
  data = scores.T                                                                   # [N, b]
  best = jax.ops.segment_max(data, group, num_segments=num_groups)                # [G, b]
  first = jnp.where(data == best[group], jnp.arange(n, dtype=jnp.int32)[:, None], jnp.iinfo(jnp.int32).max)
  return jax.ops.segment_min(first, group, num_segments=num_groups).T             # [b, G]


def count(scores, p, valid, hit1, top1, m, t):
  """Integer counts of HCA, MTA and mistake severity for one batch (traced under jit).

  Args:
    scores: [b, N]; p: [b, L] each image's root-first path (-1 padded); valid: [b, L] p >= 0;
    hit1: [b] bool, Hit@1 right; top1: [b] the Hit@1 prediction (a node); m: [b] int32 mask;
    t: the device tables (`parent_group` [N], `in_all` [N], `paths` [N, L], `cuts` [C, N]).
  Returns:
    hca [], cut_right / cut_valid [C] (right / labelled images per cut), mistake_depth_hist [L + 1]
    (wrong Hit@1 predictions by LCA depth from the root).
  """
  n, max_len = t["paths"].shape
  safe = jnp.maximum(p, 0)                                                        # [b, L]
  winners = group_argmax(scores, t["parent_group"], n + 2)                          # [b, N + 2]
  node_right = (jnp.take_along_axis(winners, t["parent_group"][safe], axis=1) == safe) & t["in_all"][safe]
  consistent = (node_right | ~valid).all(1) & hit1                                  # [b]

  def one_cut(cut):
    """cut [N] bool -> per image (right, labelled) [b]: summed after the loop, which then needs no
    cross-device reduction inside it."""
    on = cut[safe] & valid                                                          # [b, L]
    labelled = on.any(1)                                                            # [b]
    target = jnp.take_along_axis(safe, jnp.argmax(on, axis=1)[:, None], axis=1)[:, 0]
    pred = jnp.argmax(jnp.where(cut & t["in_all"], scores, -jnp.inf), axis=-1)
    return (pred == target) & labelled & t["in_all"][target], labelled

  right, labelled = jax.lax.map(one_cut, t["cuts"])                                 # [C, b] each
  cut_right, cut_valid = (right * m).sum(1), (labelled * m).sum(1)                  # [C]
  shared = (t["paths"][top1] == p) & valid                                          # [b, L]
  lca_depth = jnp.cumprod(shared.astype(jnp.int32), axis=1).sum(1)                  # [b] in 0..L
  wrong = (~hit1).astype(jnp.int32) * m
  hist = (jax.nn.one_hot(lca_depth, max_len + 1, dtype=jnp.int32) * wrong[:, None]).sum(0)
  return {"hca": (consistent * m).sum(), "cut_right": cut_right.astype(jnp.int32),
          "cut_valid": cut_valid.astype(jnp.int32), "mistake_depth_hist": hist}
