"""Hit@k against sklearn, TOR / POR / path ratio against hand-computed answers."""
import numpy as np
import pytest

from zsl_jax.projects.hgr import metrics as hm


def test_hit_at_k_equals_sklearn_top_k_accuracy():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(500, 40))
  labels = rng.integers(0, 40, 500)
  got = hm.hit_at_k(hm.topk_indices(scores, 20), labels)
  for k in hm.HIT_KS:
    want = metrics.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(40))
    assert got[f"hit@{k}"] == pytest.approx(want, abs=1e-12)


def test_topk_is_sorted_best_first():
  scores = np.array([[0.1, 0.9, 0.5, 0.7]])
  assert hm.topk_indices(scores, 3).tolist() == [[1, 3, 2]]


# A 3-level hierarchy:            0 (animal)              1 (plant)
#                               /           \                 |
#                         2 (dog)          3 (cat)          4 (tree)
#                        /      \              |
#                  5 (terrier) 6 (hound)    7 (tabby)
PATHS = np.array([[0, -1, -1], [1, -1, -1], [0, 2, -1], [0, 3, -1], [1, 4, -1], [0, 2, 5], [0, 2, 6], [0, 3, 7]])
DEPTH = (PATHS >= 0).sum(1) - 1


def test_hierarchical_ratios_by_hand():
  labels = np.array([5, 5, 7, 4])
  # Scores over all 8 nodes for four images.
  scores = np.array([
      [0.9, 0.0, 0.8, 0.1, 0.0, 0.7, 0.6, 0.0],  # top-1 = animal (ancestor of terrier): TOR hit;
                                                # levels: animal, dog, terrier -> 3/3, path 2/2
      [0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.9, 0.0],  # top-1 hound (not on path); levels plant, cat,
                                                # hound -> 0/3, path 0
      [0.5, 0.1, 0.0, 0.2, 0.3, 0.0, 0.0, 0.1],  # top-1 animal: TOR hit; levels animal, tree, tabby
                                                # -> 2/3 (animal, tabby); pairs (0,1) no, (1,2) no -> 0
      [0.0, 0.6, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0],  # top-1 plant = ancestor: hit; levels plant, tree,
  ])                                            # depth 2 -> terrier (tie->first) -> L=2: 2/2, 1/1
  level = hm.per_level_predictions(scores, DEPTH, 3)
  assert level.tolist()[0] == [0, 2, 5]
  assert level.tolist()[2] == [0, 4, 7]
  got = hm.hierarchical_ratios(scores.argmax(1), level, labels, PATHS)
  assert got["tor"] == pytest.approx(3 / 4)
  assert got["por"] == pytest.approx((1 + 0 + 2 / 3 + 1) / 4)
  assert got["path_ratio"] == pytest.approx((1 + 0 + 0 + 1) / 4)


def test_single_level_path_counts_level_zero():
  level = np.array([[1, -1, -1], [0, -1, -1]])
  got = hm.hierarchical_ratios(np.array([1, 1]), level, np.array([1, 1]), PATHS)
  assert got == {"tor": 1.0, "por": 0.5, "path_ratio": 0.5}
