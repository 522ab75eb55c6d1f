"""DAZLE samplers: balanced batch structure, determinism, exact resume and multi-host rows."""
import numpy as np
import pytest

from zsl_jax.data import sampling
from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import samplers as zsl_batchers


class _Source:
  def __init__(self, labels):
    self.labels = np.asarray(labels)

  def get_batch(self, rows):
    return np.asarray(rows, np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)


def _labels():
  return np.repeat(np.arange(7), 5)  # 7 classes x 5 images


def _iterator(labels, **hosts):
  """The DAZLE trainer's path: the named sampler through the core iterator builder."""
  rows = np.arange(labels.size)
  sampler = zsl_batchers.make_sampler("balanced", rows, labels, 14, seed=1)
  return sampling.iterator(sampler, zsl_batchers.LoadFeatures(_Source(labels), np.arange(7)), **hosts)


def test_balanced_batches_one_class_block_each():
  labels = _labels()
  rows = np.arange(labels.size)
  idx = zsl_batchers.make_sampler("balanced", rows, labels, batch_size=16, seed=3)
  assert idx.batch_size == 14  # 7 classes x (16 // 7 = 2)
  for step in range(5):
    b = idx(step)
    assert b.size == 14
    assert sorted(np.unique(labels[b])) == list(range(7))
    np.testing.assert_array_equal(np.bincount(labels[b]), np.full(7, 2))
  np.testing.assert_array_equal(idx(4), zsl_batchers.make_sampler("balanced", rows, labels, 16, 3)(4))
  assert not np.array_equal(idx(4), idx(5))


def test_balanced_draws_the_per_class_choice_stream():
  """One vectorised draw must give the rows of DAZLE's formulation, one `choice` per picked class,
  from the same generator: runs logged before the vectorisation keep their batches."""
  rng = np.random.default_rng(0)
  for n, num_classes, batch in [(1481, 40, 50), (300, 7, 20), (60, 50, 7), (500, 3, 30)]:
    labels = rng.integers(0, num_classes, n) * 3 + 5  # sparse class ids, shuffled split order
    rows = rng.permutation(10 * n)[:n]
    sampler = zsl_batchers.make_sampler("balanced", rows, labels, batch, seed=7)
    classes = np.unique(labels)
    for step in range(50):
      draw = np.random.default_rng([7, step])
      picked = draw.choice(classes.size, sampler.classes_per_batch, replace=False)
      want = np.concatenate([draw.choice(rows[labels == classes[c]], sampler.per_class, replace=True)
                             for c in picked])
      np.testing.assert_array_equal(sampler(step), want)


def test_balanced_with_more_classes_than_batch_and_uniform():
  labels = _labels()
  rows = np.arange(labels.size)
  b = zsl_batchers.make_sampler("balanced", rows, labels, batch_size=4, seed=0)(0)
  assert np.unique(labels[b]).size == 4  # 4 distinct classes, one image each (SUN: 50 of 645)
  u = zsl_batchers.make_sampler("uniform", rows, labels, batch_size=10, seed=0)(0)
  assert np.unique(u).size == 10


def test_bad_sampler_settings_are_user_errors():
  labels = _labels()
  rows = np.arange(labels.size)
  with pytest.raises(UserError, match="'random'"):
    zsl_batchers.make_sampler("random", rows, labels, 8, 0)
  with pytest.raises(UserError, match="exceeds the 35 training images"):
    zsl_batchers.make_sampler("uniform", rows, labels, 36, 0)
  with pytest.raises(UserError, match="batches of 14 .* 4 devices"):
    zsl_batchers.make_sampler("balanced", rows, labels, 16, 0, num_devices=4)
  with pytest.raises(UserError, match="not divisible by the 3 processes"):
    _iterator(labels, process_index=0, process_count=3)


def test_iterator_resumes_exactly_and_hosts_split_rows():
  labels = _labels()
  it = _iterator(labels)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it)["index"] for _ in range(2)]
  it2 = _iterator(labels)
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2)["index"], e)
  # Two hosts: their local batches concatenate to the single-host global batch.
  parts = [next(_iterator(labels, process_index=h, process_count=2)) for h in range(2)]
  single = next(_iterator(labels))
  np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), single["index"])
  np.testing.assert_array_equal(np.concatenate([p["features"] for p in parts]), single["features"])
  np.testing.assert_array_equal(single["label"], labels[single["index"]])
