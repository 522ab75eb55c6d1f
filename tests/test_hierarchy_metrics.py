"""HGR-Net metrics as the evaluator computes them: integer counts on device, fractions on the host.

Hit@k against sklearn, TOR / POR / path ratio against hand-computed answers on a small tree, and
the counts' independence of how the images are split into batches and padded.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax.projects.hgr import metrics as hm

# A 3-level hierarchy:            0 (animal)              1 (plant)
#                               /           \                 |
#                         2 (dog)          3 (cat)          4 (tree)
#                        /      \              |
#                  5 (terrier) 6 (hound)    7 (tabby)
PATHS = np.array([[0, -1, -1], [1, -1, -1], [0, 2, -1], [0, 3, -1], [1, 4, -1], [0, 2, 5], [0, 2, 6], [0, 3, 7]])
TREE = hm.Tables.build(PATHS, candidates=[5, 6, 7, 4], all_nodes=np.arange(8))


def _metrics(scores, labels, tables, mask=None, batch=None):
  """from_counts of count_batch summed over batches of `batch` rows (default: one batch)."""
  mask = np.ones(len(labels), bool) if mask is None else mask
  batch = batch or len(labels)
  count = jax.jit(hm.count_batch, static_argnums=4)
  total = None
  for i in range(0, len(labels), batch):
    part = jax.device_get(count(jnp.asarray(scores[i:i + batch], jnp.float32), jnp.asarray(labels[i:i + batch]),
                                jnp.asarray(mask[i:i + batch]), tables.arrays(), tables.k))
    assert all(np.asarray(v).dtype == np.int32 for v in part.values())  # integer counts, exact sums
    total = part if total is None else jax.tree.map(np.add, total, part)
  return hm.from_counts(total), total


def test_hit_at_k_equals_sklearn_top_k_accuracy():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(500, 40))
  labels = rng.integers(0, 40, 500)
  flat = hm.Tables.build(np.arange(40)[:, None], candidates=np.arange(40), all_nodes=np.arange(40))
  got, _ = _metrics(scores, labels, flat, batch=64)
  assert got["count"] == 500
  for k in hm.HIT_KS:
    want = metrics.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(40))
    assert got[f"hit@{k}"] == pytest.approx(want, abs=1e-12)


def test_rank_hits_count_the_rank_of_the_true_class():
  flat = hm.Tables.build(np.arange(4)[:, None], candidates=np.arange(4), all_nodes=np.arange(4))
  _, counts = _metrics(np.array([[0.1, 0.9, 0.5, 0.7]]), np.array([3]), flat)
  assert counts["rank_hits"].tolist() == [0, 1, 0, 0]  # class 3 ranks second (best first)
  got = hm.from_counts(counts)
  assert (got["hit@1"], got["hit@2"], got["hit@20"]) == (0.0, 1.0, 1.0)  # k beyond 4 classes: all ranks


# Scores over all 8 nodes for four images of classes terrier, terrier, tabby, tree.
LABELS = np.array([5, 5, 7, 4])
SCORES = np.array([
    [0.9, 0.0, 0.8, 0.1, 0.0, 0.7, 0.6, 0.0],  # top-1 = animal (ancestor of terrier): TOR hit;
                                              # levels: animal, dog, terrier -> 3/3, path 2/2
    [0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.9, 0.0],  # top-1 hound (not on path); levels plant, cat,
                                              # hound -> 0/3, path 0
    [0.5, 0.1, 0.0, 0.2, 0.3, 0.0, 0.0, 0.1],  # top-1 animal: TOR hit; levels animal, tree, tabby
                                              # -> 2/3 (animal, tabby); pairs (0,1) no, (1,2) no -> 0
    [0.0, 0.6, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0],  # top-1 plant = ancestor: hit; levels plant, tree,
])                                            # depth 2 -> terrier (tie->first) -> L=2: 2/2, 1/1


def test_hierarchical_ratios_by_hand():
  got, counts = _metrics(SCORES, LABELS, TREE)
  assert got["tor"] == pytest.approx(3 / 4)
  assert got["por"] == pytest.approx((1 + 0 + 2 / 3 + 1) / 4)
  assert got["path_ratio"] == pytest.approx((1 + 0 + 0 + 1) / 4)
  # Candidates [terrier, hound, tabby, tree]: image 0 ranks terrier 1st, image 1 2nd (after
  # hound; ties go to the lower position), image 2 ranks tabby 2nd (after tree), image 3 tree 1st.
  assert counts["rank_hits"].tolist() == [2, 2, 0, 0]
  assert (got["hit@1"], got["hit@2"]) == (0.5, 1.0)
  # Per-depth accuracy of the level predictions: depth 0 right for images 0, 2, 3; depth 1 for
  # 0 and 3; depth 2 (3 images deep enough) for 0 and 2.
  assert hm.per_level(counts) == ([0.75, 0.5, 2 / 3], [4, 4, 3])


def test_padding_and_batching_do_not_change_the_counts():
  rng = np.random.default_rng(1)
  labels = rng.choice([2, 3, 4, 5, 6, 7], 37)
  scores = rng.normal(size=(37, 8))
  want, want_counts = _metrics(scores, labels, TREE)
  # The same images in batches of 5, plus 3 masked padding rows that copy real images.
  padded_scores = np.concatenate([scores, scores[:3]])
  padded_labels = np.concatenate([labels, labels[:3]])
  mask = np.arange(40) < 37
  got, got_counts = _metrics(padded_scores, padded_labels, TREE, mask=mask, batch=5)
  assert got == want
  for k, v in want_counts.items():
    np.testing.assert_array_equal(got_counts[k], v, err_msg=k)


def test_single_level_path_counts_level_zero():
  # Two images of class 1 (plant, depth 0): the first is predicted plant at depth 0, the second animal.
  scores = np.array([[0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
  got, _ = _metrics(scores, np.array([1, 1]), TREE)
  assert (got["tor"], got["por"], got["path_ratio"]) == (0.5, 0.5, 0.5)
