"""HGR-Net against the flat CLIP baseline on the same demo data: the follow-up run and the table.

README command 1 trains HGR-Net (`configs/hgr_rn50.py:demo`), then, as its `Trainer.next_run`, the
flat CLIP baseline (`configs/clip_rn50_baseline.py`'s recipe) with the same seed, data, model and
evaluator into `<workdir>/baseline`, and ends with one table on the unseen classes: the untrained
model (HGR-Net's step-0 evaluation; both runs start from the same weights), the baseline and
HGR-Net. The table goes to the console and to `<workdir>/comparison.md` / `.json`; a per-level
plot of both methods to `<workdir>/plots/levels_compare_<eval>.png`.

The switch is `config.compare_baseline` (only the demo config sets it). The baseline's config is
the HGR run's with `compare_with` naming the HGR workdir, which is how the second `next_run` call
knows to write the table instead of starting another run.
"""
import json
import logging
import pathlib

import jax
import ml_collections

from zsl_jax import metrics as metrics_lib
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr import config as hgr_config

logger = logging.getLogger(__name__)

BASELINE_DIR = "baseline"  # the baseline's workdir, inside the HGR-Net run's
METRICS = {"hit@1": "Hit@1", "hit@5": "Hit@5", "tor": "TOR", "por": "POR"}  # key in metrics.jsonl -> column
ROWS = (("untrained", "untrained (step 0)"), ("baseline", "flat CLIP baseline"), ("hgr", "HGR-Net"))


def next_run(config, workdir):
  """(config, workdir) of the baseline after an HGR-Net run that asks for it; None after the baseline.

  After the baseline it writes and prints the comparison (`compare`).
  """
  if config.get("compare_with"):
    compare(pathlib.Path(config.compare_with), pathlib.Path(workdir))
    return None
  if config.trainer != "hgr" or not config.get("compare_baseline", False) or config.mode != "train":
    return None
  baseline = ml_collections.ConfigDict(config.to_dict())
  hgr_config.to_baseline(baseline)
  baseline.compare_baseline = False
  baseline.compare_with = str(workdir)
  for ev in baseline.evals.values():
    ev.at_start = False  # the untrained row comes from HGR-Net's step 0: the same initial weights
  logger.info("HGR-Net done; now the flat CLIP baseline on the same data, into %s/%s", workdir, BASELINE_DIR)
  return baseline, pathlib.Path(workdir) / BASELINE_DIR


def _last(workdir, split):
  """The last evaluation record of `split` in a run's metrics.jsonl."""
  rows = metrics_lib.read_metrics(workdir, split=split)
  if not rows:
    raise UserError(f"no {split!r} evaluation in {workdir}/metrics.jsonl; re-run the command to finish the run")
  return rows[-1]


def results(hgr_dir, baseline_dir, split):
  """{row key: evaluation record} for the baseline, HGR-Net and (when evaluated at step 0) the untrained model."""
  out = {"baseline": _last(baseline_dir, split), "hgr": _last(hgr_dir, split)}
  start = [r for r in metrics_lib.read_metrics(hgr_dir, split=split) if r["step"] == 0]
  if start:
    out["untrained"] = start[-1]
  return out


def table(rows, split):
  """Markdown table of `results`, with chance level for Hit@k (uniform guess among the test classes)."""
  n = rows["hgr"]["num_classes"]
  lines = [f"Zero-shot on the {n} unseen classes ({split}, {rows['hgr']['count']} images; Hit@1 chance "
           f"{1 / n:.3f}, Hit@5 chance {min(5, n) / n:.3f})", "",
           "| model | step | " + " | ".join(METRICS.values()) + " |",
           "|---|---:|" + "---:|" * len(METRICS)]
  for key, label in ROWS:
    r = rows.get(key)
    if r is None:
      continue
    lines.append(f"| {label} | {r['step']} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |")
  return "\n".join(lines)


def compare(hgr_dir, baseline_dir):
  """Writes comparison.md / .json and the per-level plot into the HGR-Net workdir, prints the table."""
  if jax.process_index() != 0:
    return None
  config = json.loads((hgr_dir / "config.json").read_text())
  out, texts = {}, []
  for split in config.get("evals", {}):
    rows = results(hgr_dir, baseline_dir, split)
    out[split] = {key: {m: r[m] for m in (*METRICS, "step", "count", "num_classes")} for key, r in rows.items()}
    texts.append(table(rows, split))
    _plot_levels(hgr_dir, baseline_dir, split)
  text = "\n\n".join(texts)
  (hgr_dir / "comparison.md").write_text(text + "\n")
  (hgr_dir / "comparison.json").write_text(json.dumps(out, indent=1))
  print("\n" + text + "\n", flush=True)
  logger.info("comparison written to %s/comparison.md (.json) and %s/plots/levels_compare_*.png", hgr_dir, hgr_dir)
  return out


def _plot_levels(hgr_dir, baseline_dir, split):
  """Grouped bars: per-depth accuracy of the level predictions, baseline next to HGR-Net."""
  levels = {}
  for label, workdir in (("flat CLIP baseline", baseline_dir), ("HGR-Net", hgr_dir)):
    path = workdir / "plots" / f"levels_{split}.json"
    if not path.exists():
      logger.warning("no per-level accuracy at %s; the comparison plot is skipped", path)
      return
    levels[label] = json.loads(path.read_text())["accuracy"]
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 3.5))
  width = 0.8 / len(levels)
  for i, (label, accuracy) in enumerate(levels.items()):
    depths = [d for d, a in enumerate(accuracy) if a is not None]
    ax.bar([d + (i - (len(levels) - 1) / 2) * width for d in depths], [accuracy[d] for d in depths], width,
           label=label)
  ax.set_xticks(range(max(len(a) for a in levels.values())))
  ax.set_xlabel("depth in the hierarchy")
  ax.set_ylabel("accuracy of the level prediction")
  ax.set_title(f"Per-level accuracy on the unseen classes ({split})")
  ax.set_ylim(0, 1)
  ax.legend()
  fig.tight_layout()
  (hgr_dir / "plots").mkdir(parents=True, exist_ok=True)
  fig.savefig(hgr_dir / "plots" / f"levels_compare_{split}.png", dpi=100)
  plt.close(fig)
