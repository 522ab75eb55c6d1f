"""HGR-Net's metrics: Hit@k over the test classes, and TOR / POR / path ratio over the hierarchy.

Definitions (spec hgr_net.md §4.2), for an image of class y with root-first path
P(y) = (a_0, ..., a_{L-1} = y):
  Hit@k       y among the k highest-scoring test classes (pure zero-shot: only test classes rank).
  TOR         the top-1 over *all* classes is y or one of its ancestors on P(y).
  POR         (1/L) sum_j [argmax over the nodes at depth(a_j) == a_j]   (per-level accuracy).
  path ratio  (1/(L-1)) sum_{j<L-1} [levels j and j+1 both right]; for L = 1, level 0 right.
All are image averages. The functions take predictions (small integer arrays), so evaluators can
compute scores on device and only move top-k indices to the host.
"""
import math

import numpy as np

HIT_KS = (1, 2, 5, 10, 20)


def _mean(x):
  """Correctly rounded mean: independent of image order (hosts gather images in another order)."""
  x = np.asarray(x, np.float64).ravel()
  return math.fsum(x) / len(x) if len(x) else float("nan")


def topk_indices(scores, k):
  """[N, C] -> [N, k] column indices of the k highest scores, best first (ties: lower index)."""
  k = min(k, scores.shape[1])
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  order = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)
  return np.take_along_axis(part, order, 1)


def hit_at_k(topk, labels, ks=HIT_KS):
  """topk: [N, kmax] ranked class indices; labels: [N] -> {"hit@k": fraction}."""
  hits = topk == np.asarray(labels)[:, None]
  return {f"hit@{k}": _mean(hits[:, :k].any(1)) for k in ks}


def per_level_predictions(scores_all, node_depth, max_len):
  """[N, nodes] scores over all classes -> [N, max_len] argmax node among nodes of each depth."""
  out = np.full((scores_all.shape[0], max_len), -1, np.int64)
  for d in range(max_len):
    nodes = np.flatnonzero(node_depth == d)
    if len(nodes):
      out[:, d] = nodes[np.argmax(scores_all[:, nodes], axis=1)]
  return out


def hierarchical_ratios(top1_all, level_pred, labels, paths):
  """TOR, POR and path ratio.

  Args:
    top1_all: [N] node with the highest score over all classes.
    level_pred: [N, max_len] node predicted at each depth (per_level_predictions).
    labels: [N] node of each image's class.
    paths: [nodes, max_len] root-first paths including the node, -1 padded.
  """
  labels = np.asarray(labels)
  p = paths[labels]                         # [N, max_len]
  valid = p >= 0
  length = valid.sum(1)
  tor = (p == np.asarray(top1_all)[:, None]).any(1)
  right = (level_pred[:, :p.shape[1]] == p) & valid
  por = right.sum(1) / length
  pairs = right[:, :-1] & right[:, 1:] & valid[:, 1:]
  path = np.where(length > 1, pairs.sum(1) / np.maximum(length - 1, 1), right[:, 0])
  return {"tor": _mean(tor), "por": _mean(por), "path_ratio": _mean(path)}
