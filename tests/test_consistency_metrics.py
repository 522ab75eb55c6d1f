"""HCA, MTA, mistake severity and per-depth accuracy as the evaluator computes them (integer counts on
device, `metrics.count_batch`, divided by `metrics.from_counts`), against answers worked out by hand on a
small tree, each in a case where it differs from TOR / POR; and ProTeCt-style tree-cut sampling.
"""
import fractions

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax.projects.hgr import metrics as hm
from zsl_jax.projects.hgr.eval_suite import consistency

# 0 animal > 2 dog > {5 terrier, 6 hound}; 0 animal > 3 cat > 7 tabby; 1 plant > 4 tree.
PATHS = np.array([[0, -1, -1], [1, -1, -1], [0, 2, -1], [0, 3, -1], [1, 4, -1], [0, 2, 5], [0, 2, 6], [0, 3, 7]])
CANDIDATES = [5, 6, 7, 4, 2]  # the leaves, and dog: 21K-D tests internal classes too
CUTS = np.zeros((4, 8), bool)
for _i, _cut in enumerate([(0, 1), (2, 3, 4), (5, 6, 7, 4), (0, 4)]):
  CUTS[_i, list(_cut)] = True
TREE = hm.Tables.build(PATHS, CANDIDATES, np.arange(8), cuts=CUTS)

# Scores over the 8 nodes of four images (labels terrier, tabby, hound, dog); worked out below.
LABELS = np.array([5, 7, 6, 2])
SCORES = np.array([
    # A terrier: Hit@1 terrier; node classifiers animal>plant, dog>cat, terrier>hound: HCA 1. Levels:
    # animal, tree (0.4 beats dog at depth 1), terrier -> POR 2/3; TOR 1 (top-1 terrier).
    [0.5, 0.1, 0.3, 0.2, 0.4, 0.9, 0.0, 0.0],
    # B tabby: every level right (animal, cat, tabby): TOR = POR = 1; but the test classes rank tree
    # (0.6) above tabby (0.5): Hit@1 wrong, so HCA 0. Mistake: tree vs tabby share only the root.
    [0.8, 0.1, 0.2, 0.7, 0.6, 0.3, 0.1, 0.5],
    # C hound: Hit@1 terrier (wrong; LCA dog at depth 2); levels animal, dog, terrier -> POR 2/3; TOR 0.
    [0.6, 0.2, 0.5, 0.1, 0.0, 0.7, 0.4, 0.0],
    # D dog: Hit@1 terrier (wrong; LCA dog itself, depth 2); levels animal, dog -> POR 1, TOR 1 (animal).
    [0.9, 0.0, 0.8, 0.3, 0.1, 0.85, 0.2, 0.1],
])


def _metrics(scores, labels, tables=TREE):
  counts = jax.jit(hm.count_batch, static_argnums=4)(jnp.asarray(scores, jnp.float32), jnp.asarray(labels),
                                                      jnp.ones(len(labels), bool), tables.arrays(), tables.k)
  counts = jax.device_get(counts)
  assert all(np.asarray(v).dtype == np.int32 for v in counts.values())  # integer counts add up exactly
  return hm.from_counts(counts), counts


def test_hca_needs_the_flat_prediction_and_every_node_classifier():
  a, _ = _metrics(SCORES[:1], LABELS[:1])
  assert (a["hca"], a["tor"], a["por"]) == (1.0, 1.0, pytest.approx(2 / 3))  # HCA above POR
  b, _ = _metrics(SCORES[1:2], LABELS[1:2])
  assert (b["hca"], b["tor"], b["por"], b["hit@1"]) == (0.0, 1.0, 1.0, 0.0)   # HCA below TOR and POR
  got, counts = _metrics(SCORES, LABELS)
  assert int(counts["hca"]) == 1 and got["hca"] == 0.25
  assert (got["tor"], got["por"]) == (0.75, pytest.approx((2 / 3 + 1 + 2 / 3 + 1) / 4))


def test_hca_node_classifier_chooses_among_siblings_only():
  # Terrier beats hound but the cousin tabby (another parent) scores higher: POR's depth-2 level is
  # wrong, HCA's dog classifier is right. Hit@1 among the test classes must still be terrier: tabby
  # is made a non-candidate here.
  tables = hm.Tables.build(PATHS, [5, 6], np.arange(8), cuts=CUTS)
  scores = np.array([[0.9, 0.1, 0.8, 0.2, 0.0, 0.5, 0.4, 0.7]])
  got, _ = _metrics(scores, np.array([5]), tables)
  assert (got["hca"], got["por"], got["tor"]) == (1.0, pytest.approx(2 / 3), 1.0)


def test_mta_by_hand():
  got, counts = _metrics(SCORES, LABELS)
  # Cut {animal, plant}: all four right. {dog, cat, tree}: A predicts tree -> 3/4. Leaves {terrier,
  # hound, tabby, tree}: A right, B (tree) and C (terrier) wrong, D (dog) lies above the cut and is
  # left out -> 1/3. {animal, tree}: all four map to animal and are right.
  assert counts["cut_right"].tolist() == [4, 3, 1, 4] and counts["cut_valid"].tolist() == [4, 4, 3, 4]
  assert got["mta"] == pytest.approx(float(fractions.Fraction(37, 48)), abs=1e-15)
  assert got["mta"] not in (got["tor"], got["por"], got["hit@1"])


def test_mistake_severity_by_hand():
  got, counts = _metrics(SCORES, LABELS)
  # Wrong Hit@1: B (tree vs tabby: LCA the root, depth 0), C (terrier vs hound: LCA dog, depth 2),
  # D (terrier vs dog: LCA dog, depth 2). A is right and not a mistake.
  assert counts["mistake_depth_hist"].tolist() == [1, 0, 2, 0] == got["mistake_depth_hist"]
  assert got["mistake_depth"] == pytest.approx(4 / 3)
  # Image C alone: TOR 0 and POR 2/3, yet its mistake is mild (depth 2 of 3).
  c, _ = _metrics(SCORES[2:3], LABELS[2:3])
  assert (c["tor"], c["mistake_depth"]) == (0.0, 2.0)
  a, _ = _metrics(SCORES[:1], LABELS[:1])
  assert np.isnan(a["mistake_depth"]) and a["mistake_depth_hist"] == [0, 0, 0, 0]  # no mistakes


def test_per_depth_accuracy_by_hand():
  got, _ = _metrics(SCORES, LABELS)
  # Depth 0 right for all four; depth 1 wrong for A (tree); depth 2 (A, B, C reach it) wrong for C.
  assert got["depth_acc"] == [1.0, 0.75, pytest.approx(2 / 3)]
  assert hm.per_level(_metrics(SCORES, LABELS)[1])[1] == [4, 4, 3]
  assert got["depth_acc"][1] != got["por"]


def test_group_argmax_equals_masked_argmax():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, (6, 30)).astype(np.float32)  # many ties: the first index must win
  group = rng.integers(0, 5, 30).astype(np.int32)           # group 5 stays empty
  got = np.asarray(jax.jit(consistency.group_argmax, static_argnums=2)(scores, group, 6))
  for g in range(5):
    want = np.argmax(np.where(group[None] == g, scores, -np.inf), axis=1)
    np.testing.assert_array_equal(got[:, g], want)
  assert (got[:, 5] > 30).all()  # an empty group names no node


def _random_tree(n, seed):
  rng = np.random.default_rng(seed)
  paths = [[0]]
  for i in range(1, n):
    parent = paths[int(rng.integers(0, i))]
    paths.append((parent + [i]) if len(parent) < 5 and rng.random() < 0.8 else [i])
  out = np.full((n, 6), -1)
  for i, p in enumerate(paths):
    out[i, :len(p)] = p
  return out


def _is_cut(paths, cut):
  """Every leaf's path meets the cut exactly once (so the cut's nodes are a label set of the pruned tree)."""
  parent = consistency.tree_parents(paths)
  leaves = np.setdiff1d(np.arange(len(paths)), parent)
  return all(cut[paths[i][paths[i] >= 0]].sum() == 1 for i in leaves)


def test_tree_cuts_are_distinct_valid_and_seeded():
  paths = _random_tree(200, 0)
  cuts = consistency.sample_tree_cuts(paths, 25, seed=3)
  assert cuts.shape == (25, 200) and len({c.tobytes() for c in cuts}) == 25
  assert all(_is_cut(paths, c) for c in cuts)
  np.testing.assert_array_equal(cuts, consistency.sample_tree_cuts(paths, 25, seed=3))
  assert not np.array_equal(cuts, consistency.sample_tree_cuts(paths, 25, seed=4))
  sizes = cuts.sum(1)
  assert sizes[:5].mean() < sizes[-5:].mean()  # dropout 0.9 first (coarse cuts), 0.1 last (fine cuts)


def test_a_small_tree_gives_all_its_distinct_cuts():
  cuts = consistency.sample_tree_cuts(PATHS, 25, seed=0)
  # animal: collapsed, or expanded with dog and cat each collapsed or expanded (5); plant: 2 -> 10 cuts.
  assert len(cuts) == 10 and len({c.tobytes() for c in cuts}) == 10
  assert all(_is_cut(PATHS, c) for c in cuts)
  assert any((c == CUTS[1]).all() for c in cuts)
