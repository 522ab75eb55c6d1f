"""ZSL / GZSL metrics from class scores: per-class top-1, H, calibrated stacking and AUSUC.

Pure numpy on host arrays so that DAZLE (scores with the ±1 margin) and VSMR (cosine to class
prototypes) share one protocol: per-class accuracy and H as in the official DAZLE code (VSMR's
scripts report per-sample accuracy and no H). Calibrated stacking (Chao et al., 2016) subtracts γ
from every seen-class score; γ = 0 is the model's own operating point. Each sample's prediction
switches from its best seen class to its best unseen class at exactly one γ (the gap between the two
maxima), so the whole seen/unseen curve is computed exactly by sorting the gaps.
"""
import numpy as np


def per_class_accuracy(pred, labels):
  """Mean over the classes present in `labels` of each class's top-1 accuracy."""
  pred, labels = np.asarray(pred), np.asarray(labels)
  if labels.size == 0:
    return float("nan")
  classes, inverse = np.unique(labels, return_inverse=True)
  hits = np.bincount(inverse, weights=(pred == labels).astype(np.float64), minlength=classes.size)
  counts = np.bincount(inverse, minlength=classes.size)
  return float(np.mean(hits / counts))


def harmonic_mean(s, u):
  return 0.0 if s + u == 0 else 2.0 * s * u / (s + u)


def gzsl_metrics(seen_scores, seen_labels, unseen_scores, unseen_labels, is_unseen):
  """ZSL and GZSL numbers; scores [N, K_u] over a class universe, labels are universe positions.

  Returns zsl_acc (unseen images, argmax over unseen columns only), gzsl_seen, gzsl_unseen (argmax
  over all columns) and gzsl_h; a split without images gives NaN for its entries.
  """
  is_unseen = np.asarray(is_unseen, bool)
  unseen_cols = np.flatnonzero(is_unseen)
  out = {}
  if len(unseen_labels):
    zsl_pred = unseen_cols[np.argmax(unseen_scores[:, unseen_cols], axis=1)]
    out["zsl_acc"] = per_class_accuracy(zsl_pred, unseen_labels)
    out["gzsl_unseen"] = per_class_accuracy(np.argmax(unseen_scores, 1), unseen_labels)
  else:
    out["zsl_acc"] = out["gzsl_unseen"] = float("nan")
  out["gzsl_seen"] = per_class_accuracy(np.argmax(seen_scores, 1), seen_labels) if len(seen_labels) else float("nan")
  out["gzsl_h"] = harmonic_mean(out["gzsl_seen"], out["gzsl_unseen"])
  return out


def _gap_weights(scores, labels, is_unseen, want_unseen):
  """Per sample: gap (max seen - max unseen) and its weight 1/(n_c * C) if its side's argmax is right."""
  seen_cols, unseen_cols = np.flatnonzero(~is_unseen), np.flatnonzero(is_unseen)
  s_best = seen_cols[np.argmax(scores[:, seen_cols], 1)]
  u_best = unseen_cols[np.argmax(scores[:, unseen_cols], 1)]
  gap = scores[np.arange(len(labels)), s_best] - scores[np.arange(len(labels)), u_best]
  right = (u_best if want_unseen else s_best) == labels
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  weight = right / (counts[inverse] * classes.size)
  return gap, weight


def stacking_curve(seen_scores, seen_labels, unseen_scores, unseen_labels, is_unseen):
  """Exact calibrated-stacking curve: (gammas, S(γ), U(γ)) with γ from -inf to +inf, and AUSUC.

  A sample is predicted seen iff (max seen score - γ) > (max unseen score).
  """
  is_unseen = np.asarray(is_unseen, bool)
  gs, ws = _gap_weights(seen_scores, seen_labels, is_unseen, want_unseen=False)
  gu, wu = _gap_weights(unseen_scores, unseen_labels, is_unseen, want_unseen=True)
  gammas = np.unique(np.concatenate([gs, gu]))
  # S(γ) = Σ w [gap > γ]; U(γ) = Σ w [gap <= γ]; evaluated at each threshold and at -inf.
  os_, ou = np.argsort(gs), np.argsort(gu)
  cs, cu = np.concatenate([[0.0], np.cumsum(ws[os_])]), np.concatenate([[0.0], np.cumsum(wu[ou])])
  s_curve = ws.sum() - cs[np.searchsorted(gs[os_], gammas, side="right")]
  u_curve = cu[np.searchsorted(gu[ou], gammas, side="right")]
  gammas = np.concatenate([[-np.inf], gammas])
  s_curve = np.concatenate([[ws.sum()], s_curve])
  u_curve = np.concatenate([[0.0], u_curve])
  ausuc = float(np.sum(np.diff(u_curve) * (s_curve[1:] + s_curve[:-1]) / 2.0))
  return gammas, s_curve, u_curve, ausuc


def best_gamma(gammas, s_curve, u_curve):
  """The γ of highest H on a stacking curve, moved to the middle of its interval (no score ties there)."""
  h = np.array([harmonic_mean(s, u) for s, u in zip(s_curve, u_curve)])
  i = int(np.argmax(h))
  lo = gammas[i] if np.isfinite(gammas[i]) else gammas[min(i + 1, len(gammas) - 1)] - 1.0
  hi = gammas[i + 1] if i + 1 < len(gammas) else lo + 2.0
  return float((lo + hi) / 2.0), float(h[i])


def calibrated_metrics(seen_scores, seen_labels, unseen_scores, unseen_labels, is_unseen, gamma):
  """`gzsl_metrics` after subtracting γ from every seen-class score (calibrated stacking)."""
  shift = np.where(np.asarray(is_unseen, bool), 0.0, gamma).astype(np.float64)
  return gzsl_metrics(seen_scores - shift, seen_labels, unseen_scores - shift, unseen_labels, is_unseen)


def plot_curve(path, s_curve, u_curve, ausuc, operating_point, title):
  """Seen vs unseen accuracy curve with the γ = 0 operating point, to a PNG file."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=100)
  ax.plot(u_curve, s_curve, "-", lw=1.5, label=f"calibrated stacking (AUSUC {ausuc:.3f})")
  s0, u0 = operating_point
  ax.plot([u0], [s0], "o", color="C3", label=f"γ=0: S {s0:.3f}, U {u0:.3f}, H {harmonic_mean(s0, u0):.3f}")
  ax.set_xlabel("unseen accuracy (per class)")
  ax.set_ylabel("seen accuracy (per class)")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="upper right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
