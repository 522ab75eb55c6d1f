"""GZSL metrics on synthetic scores: per-class accuracy, H and the exact calibrated-stacking curve."""
import numpy as np
import pytest

from zsl_jax.projects.attr import calibration


def test_per_class_accuracy_weights_classes_equally():
  labels = np.array([0, 0, 0, 0, 1])
  pred = np.array([0, 0, 0, 0, 0])
  assert calibration.per_class_accuracy(pred, labels) == pytest.approx(0.5)  # per sample would be 0.8


def test_gzsl_metrics_hand_example():
  is_unseen = np.array([False, False, True, True])
  seen_scores = np.array([[5, 1, 0, 0], [0, 5, 6, 0], [5, 0, 0, 0.]])
  seen_labels = np.array([0, 1, 0])
  unseen_scores = np.array([[0, 0, 3, 1], [9, 0, 1, 2], [0, 0, 0, 1.]])
  unseen_labels = np.array([2, 3, 3])
  m = calibration.gzsl_metrics(seen_scores, seen_labels, unseen_scores, unseen_labels, is_unseen)
  assert m["gzsl_seen"] == pytest.approx((1.0 + 0.0) / 2)  # class 0: 2/2, class 1: 0/1
  assert m["gzsl_unseen"] == pytest.approx((1.0 + 0.5) / 2)  # class 2: 1/1, class 3: 1/2
  assert m["zsl_acc"] == pytest.approx(1.0)  # over unseen columns only all are right
  assert m["gzsl_h"] == pytest.approx(2 * 0.5 * 0.75 / 1.25)


def _brute(seen_scores, seen_labels, unseen_scores, unseen_labels, is_unseen, gamma):
  shift = np.where(is_unseen, 0.0, gamma)
  return (calibration.per_class_accuracy(np.argmax(seen_scores - shift, 1), seen_labels),
          calibration.per_class_accuracy(np.argmax(unseen_scores - shift, 1), unseen_labels))


def test_stacking_curve_matches_brute_force_sweep():
  rng = np.random.default_rng(0)
  k, is_unseen = 9, np.isin(np.arange(9), [2, 5, 7])
  seen_labels = rng.choice(np.flatnonzero(~is_unseen), 80)
  unseen_labels = rng.choice(np.flatnonzero(is_unseen), 60)
  seen_scores = rng.standard_normal((80, k)) + 1.5 * np.eye(k)[seen_labels]
  unseen_scores = rng.standard_normal((60, k)) + 1.5 * np.eye(k)[unseen_labels]
  gammas, s_curve, u_curve, ausuc = calibration.stacking_curve(seen_scores, seen_labels, unseen_scores,
                                                               unseen_labels, is_unseen)
  # Each threshold's value holds on [t_i, t_{i+1}); check just above every threshold.
  for g, s, u in list(zip(gammas, s_curve, u_curve))[1::7]:
    bs, bu = _brute(seen_scores, seen_labels, unseen_scores, unseen_labels, is_unseen, g + 1e-9)
    assert (s, u) == pytest.approx((bs, bu), abs=1e-12)
  assert (s_curve[0], u_curve[0]) == pytest.approx(_brute(seen_scores, seen_labels, unseen_scores, unseen_labels,
                                                          is_unseen, -1e9))
  assert s_curve[-1] == pytest.approx(0.0, abs=1e-12) and u_curve[-1] == pytest.approx(
      calibration.gzsl_metrics(seen_scores, seen_labels, unseen_scores, unseen_labels, is_unseen)["zsl_acc"])
  # AUSUC by a dense brute-force sweep (trapezoid over the same monotone curve).
  grid = np.concatenate([[-1e9], np.sort(np.r_[gammas[1:], gammas[1:] + 1e-9])])
  pts = np.array([_brute(seen_scores, seen_labels, unseen_scores, unseen_labels, is_unseen, g) for g in grid])
  dense = np.sum(np.diff(pts[:, 1]) * (pts[1:, 0] + pts[:-1, 0]) / 2)
  assert ausuc == pytest.approx(dense, abs=1e-9)
  assert 0.0 < ausuc < 1.0


def test_perfect_separation_has_ausuc_one():
  is_unseen = np.array([False, True])
  s = np.array([[2.0, 0.0]] * 3)
  u = np.array([[0.0, 2.0]] * 3)
  *_, ausuc = calibration.stacking_curve(s, np.zeros(3, int), u, np.ones(3, int), is_unseen)
  assert ausuc == pytest.approx(1.0)


def test_plot_writes_png(tmp_path):
  calibration.plot_curve(tmp_path / "c.png", np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.5, 1.0]), 0.75, (0.5, 0.5),
                         "t")
  assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
