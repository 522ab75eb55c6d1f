"""Per-depth accuracy plots: one line per variant (or run), saved as PNG with matplotlib's Agg backend."""
import logging

logger = logging.getLogger(__name__)


def per_depth(path, accuracy, images, title):
  """Writes a PNG of `accuracy` ({label: [accuracy or None per depth]}) with the images per depth under it.

  A single label is drawn as bars (the evaluator's per-level plot); several as lines with markers.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel  (optional, heavy)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  depths = [d for d, n in enumerate(images) if n]
  fig, ax = plt.subplots(figsize=(6.5, 3.8))
  if len(accuracy) == 1:
    (values,) = accuracy.values()
    ax.bar(depths, [values[d] for d in depths], color="tab:blue")
  else:
    for label, values in accuracy.items():
      ax.plot(depths, [values[d] for d in depths], marker="o", label=label)
    ax.legend(fontsize=8)
  ax.set_xticks(depths)
  ax.set_xticklabels([f"{d}\n{images[d]}" for d in depths], fontsize=8)
  ax.set_xlabel("depth in the hierarchy (images whose path reaches it)")
  ax.set_ylabel("accuracy of the level prediction")
  ax.set_title(title)
  ax.set_ylim(0, 1)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
