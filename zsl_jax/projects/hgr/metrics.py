"""HGR-Net's metrics: Hit@k over the test classes, and TOR / POR / path ratio over the hierarchy.

Definitions (the official code's test in `main.py`: `hit_ratio`, `point_ratio`, `path_ratio`; the
first two read as the paper's TOR and POR), for an image of class y with root-first path
P(y) = (a_0, ..., a_{L-1} = y):
  Hit@k       y among the k highest-scoring test classes (pure zero-shot: only test classes rank).
  TOR         the top-1 over *all* classes is y or one of its ancestors on P(y).
  POR         (1/L) sum_j [argmax over the nodes at depth(a_j) == a_j]   (per-level accuracy).
  path ratio  (1/(L-1)) sum_{j<L-1} [levels j and j+1 both right]; for L = 1, level 0 right.
All are image averages.

They are computed in two halves. On device, `count_batch` turns a batch's scores into INTEGER
counts (hits at each rank, TOR hits, right levels summed per path length, per-depth right/valid
counts), which add up over batches and hosts: the sums are the same for any host/device layout,
and the host only ever holds O(depth + k) numbers, however many images there are. On the host,
`from_counts` divides: POR = (1/n) sum_L right_L / L exactly (fractions), then rounds once.

Beside these, the same counts carry the hierarchical-consistency metrics HCA, MTA, mistake severity
and per-depth accuracy (definitions and device code in `eval_suite.consistency`).
"""
import dataclasses
import fractions

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax.projects.hgr.eval_suite import consistency

HIT_KS = (1, 2, 5, 10, 20)


@dataclasses.dataclass(frozen=True)
class Tables:
  """Host tables of one evaluation, built once: which nodes rank for what."""
  candidates: np.ndarray    # [Nc] nodes ranked for Hit@k (the test classes)
  position: np.ndarray      # [N] a node's position among the candidates, -1 if not one
  in_all: np.ndarray        # [N] bool: nodes TOR / POR choose among
  depth_group: np.ndarray   # [N] depth of each node of `in_all`, L for the others (POR's level classifiers)
  parent_group: np.ndarray  # [N] parent of each node of `in_all` (N: the root), N + 1 for the others (HCA)
  paths: np.ndarray         # [N, L] root-first paths including the node, -1 padded
  cuts: np.ndarray          # [C, N] bool: MTA's tree cuts

  @classmethod
  def build(cls, paths, candidates, all_nodes, cuts=25, cut_seed=0):
    """`cuts`: how many tree cuts MTA samples (from `cut_seed`), or the [C, N] bool cuts themselves."""
    paths = np.asarray(paths, np.int32)
    n, max_len = paths.shape
    candidates = np.asarray(candidates, np.int32)
    position = np.full(n, -1, np.int32)
    position[candidates] = np.arange(len(candidates), dtype=np.int32)
    in_all = np.zeros(n, bool)
    in_all[np.asarray(all_nodes, np.int64)] = True
    depth_group = np.where(in_all, (paths >= 0).sum(1) - 1, max_len).astype(np.int32)
    if np.ndim(cuts) == 0:
      cuts = consistency.sample_tree_cuts(paths, int(cuts), cut_seed)
    cuts = np.asarray(cuts, bool).reshape(-1, n)
    return cls(candidates, position, in_all, depth_group, consistency.parent_groups(paths, in_all), paths, cuts)

  @property
  def k(self):
    """Ranks kept for Hit@k: the largest k, or fewer when there are fewer candidates."""
    return min(max(HIT_KS), len(self.candidates))

  def arrays(self):
    return dataclasses.asdict(self)


def count_batch(scores, labels, mask, tables, k):
  """Integer counts of one batch (traced under jit; sums over a global batch span every host).

  A label's rank is counted directly (test classes scoring above it, ties broken towards the lower
  position as `lax.top_k` does): unlike top_k, that needs no gather of the batch's scores across devices.

  Args:
    scores: [b, N] image-to-node similarities; labels: [b] node of each image's class;
    mask: [b] bool, False for padding (and undecodable images); tables: `Tables.arrays()`, numpy or
    device arrays; k: `Tables.k` (static).
  Returns:
    {name: int32 array}: count [], rank_hits [k] (images whose class is ranked r-th), tor [],
    right_by_length / path_by_length [L + 1] (right levels / right consecutive pairs, level 0 for
    L = 1, summed over the images of each path length), right_by_depth / valid_by_depth [L], and
    `consistency.count`'s hca [], cut_right / cut_valid [C], mistake_depth_hist [L + 1].
  """
  t = {name: jnp.asarray(x) for name, x in tables.items()}
  max_len = t["paths"].shape[1]
  m = mask.astype(jnp.int32)                                                       # [b]
  cand = scores[:, t["candidates"]]                                                # [b, Nc]
  pos = t["position"][labels]                                                      # [b], -1: not a test class
  own = jnp.take_along_axis(cand, jnp.maximum(pos, 0)[:, None], axis=1)            # [b, 1]
  ahead = (cand > own) | ((cand == own) & (jnp.arange(cand.shape[1])[None] < pos[:, None]))
  rank = jnp.where(pos >= 0, ahead.sum(1), k)         # [b] rank in top_k's order (ties: lower index first)
  rank_hits = (jax.nn.one_hot(rank, k, dtype=jnp.int32) * m[:, None]).sum(0)       # [k]
  p = t["paths"][labels]                                                           # [b, L]
  valid = p >= 0
  top_all = jnp.argmax(jnp.where(t["in_all"], scores, -jnp.inf), axis=-1)         # [b]
  tor = ((p == top_all[:, None]).any(1) * m).sum()
  levels = consistency.group_argmax(scores, t["depth_group"], max_len + 1)[:, :max_len]  # [b, L]
  right = (levels == p) & valid                                                    # [b, L]
  pairs = (right[:, :-1] & right[:, 1:] & valid[:, 1:]).sum(1)                     # [b]
  length = valid.sum(1)                                                            # [b]
  path = jnp.where(length > 1, pairs, right[:, 0])
  by_length = jax.nn.one_hot(length, max_len + 1, dtype=jnp.int32) * m[:, None]    # [b, L + 1]
  per_image = lambda x: (by_length * x.astype(jnp.int32)[:, None]).sum(0)
  top1 = t["candidates"][jnp.argmax(cand, axis=1)]                                  # [b] Hit@1's prediction
  extra = consistency.count(scores, p, valid, rank == 0, top1, m, t)
  return {"count": m.sum(), "rank_hits": rank_hits, "tor": tor, "right_by_length": per_image(right.sum(1)),
          "path_by_length": per_image(path), "right_by_depth": (right * m[:, None]).sum(0),
          "valid_by_depth": (valid * m[:, None]).sum(0), **extra}


def _ratio(numerators, count):
  """(1/count) * the sum of exact `numerators`, rounded once (NaN without images)."""
  return float(sum(numerators, fractions.Fraction(0)) / count) if count else float("nan")


def from_counts(counts):
  """Summed `count_batch` counts (host numpy) -> {hit@k, tor, por, path_ratio, hca, mta, mistake_depth, count,
  depth_acc (per depth, None where no image is that deep), depth_images, mistake_depth_hist (lists)}."""
  n = int(counts["count"])
  hits = np.cumsum(np.asarray(counts["rank_hits"], np.int64))
  out = {f"hit@{k}": _ratio([int(hits[min(k, len(hits)) - 1])], n) for k in HIT_KS}
  out["tor"] = _ratio([int(counts["tor"])], n)
  right, path = (np.asarray(counts[k], np.int64) for k in ("right_by_length", "path_by_length"))
  out["por"] = _ratio([fractions.Fraction(int(r), length) for length, r in enumerate(right) if length], n)
  out["path_ratio"] = _ratio([fractions.Fraction(int(h), max(length - 1, 1)) for length, h in enumerate(path)
                              if length], n)
  out["hca"] = _ratio([int(counts["hca"])], n)
  cut_acc = [fractions.Fraction(int(r), int(v)) for r, v in zip(counts["cut_right"], counts["cut_valid"]) if v]
  out["mta"] = _ratio(cut_acc, len(cut_acc))
  hist = [int(h) for h in counts["mistake_depth_hist"]]
  out["mistake_depth"] = _ratio([d * h for d, h in enumerate(hist)], sum(hist))
  out["count"] = n
  out["depth_acc"], out["depth_images"] = per_level(counts)
  out["mistake_depth_hist"] = hist
  return out


def per_level(counts):
  """Per-depth accuracy of the level predictions (None where no image has that depth) and image counts."""
  right, valid = (np.asarray(counts[k], np.int64) for k in ("right_by_depth", "valid_by_depth"))
  accuracy = [float(fractions.Fraction(int(r), int(v))) if v else None for r, v in zip(right, valid)]
  return accuracy, [int(v) for v in valid]
