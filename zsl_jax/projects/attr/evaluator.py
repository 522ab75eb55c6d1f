"""ZSL / GZSL evaluation with model selection, shared by DAZLE and VSMR (dazle_vsmr.md §3, §9.1).

Every call scores the test split (`zsl_acc gzsl_seen gzsl_unseen gzsl_h ausuc` of this checkpoint)
and, with `select_on='val'`, the validation split (val_* keys: train classes seen, validation
classes pseudo-unseen). It keeps the evaluation whose selection criterion (validation H; test H in
the reference protocol `select_on='test_reference'`; validation ZSL accuracy when there are no
seen test images) is best so far and reports its test numbers as `selected_*` with `selected_step`
and `selected_on`. Test-selected numbers say so in `selected_on`. The history is re-read from
`metrics.jsonl`, so resumed runs and `mode=eval` in the same workdir continue the same selection.

The trainer supplies `universe(kind)` (class ids, unseen mask, query splits) and
`eval_scores(evaluator, variables, universe)`; this module owns batching, gathering and metrics.
"""
import logging
import math
import pathlib

import grain
import jax
import numpy as np

from zsl_jax import metrics as metrics_lib
from zsl_jax import sharding
from zsl_jax.data import pipeline
from zsl_jax.errors import UserError
from zsl_jax.evaluators import base as eval_base
from zsl_jax.projects.attr import calibration

logger = logging.getLogger(__name__)

METRICS = ("zsl_acc", "gzsl_seen", "gzsl_unseen", "gzsl_h", "ausuc")
SELECT_LABEL = {"val": "val", "test_reference": "test (reference protocol: selected on the test set)",
                "final": "none (final checkpoint)"}


class Evaluator(eval_base.Evaluator):

  def __init__(self, trainer, mesh, workdir, batch_size=128, plot=True, name="gzsl", also_per_sample=False):
    super().__init__(trainer, mesh, workdir)
    select_on = trainer.select_on  # decides the training split too, so the trainer owns it
    if select_on not in SELECT_LABEL:
      raise UserError(f"zsl.select_on={select_on!r}; use 'val', 'test_reference' or 'final'")
    self.select_on = select_on
    self.iterations_from = trainer.config.zsl.get("iterations_from", "")  # a retrain_on_trainval run
    n_dev = mesh.devices.size
    self.batch_size = int(math.ceil(int(batch_size) / n_dev) * n_dev)  # divisible by the devices
    self.plot = plot
    self.name = name
    self.also_per_sample = also_per_sample
    self.workdir = pathlib.Path(workdir)
    self._best = None  # (criterion, step, record)
    self._history_loaded = False

  # ------------------------------------------------------------------ batching
  def map_split(self, split, fn):
    """Runs jitted `fn(batch) -> {name: [b, ...]}` over one split; host arrays of unmasked rows.

    Batches are exact and multi-host safe (padded + masked); 'label' (class id) and 'index' of
    each image come back with the outputs, in the same (host-gathered) order.
    """
    source = self.trainer.dataset.source(split)
    if len(source) == 0:
      return None
    ds = pipeline.padded_eval_dataset(grain.MapDataset.source(source), self.batch_size)
    parts = []
    for batch in ds:
      g = sharding.global_batch(batch, self.mesh)
      out = dict(fn(g))
      out.update(label=g["label"], index=g["index"], _mask=g[pipeline.MASK_KEY])
      parts.append(eval_base.to_host(out))
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = cat.pop("_mask").astype(bool)
    return {k: v[keep] for k, v in cat.items()}

  # ------------------------------------------------------------------ one universe
  def _evaluate(self, variables, kind):
    uni = self.trainer.universe(kind)
    scored = self.trainer.eval_scores(self, variables, uni)
    position = np.full(self.trainer.dataset.num_classes, -1, np.int64)
    position[uni["classes"]] = np.arange(len(uni["classes"]))
    seen, unseen = scored["seen"], scored["unseen"]
    k = len(uni["classes"])
    empty = (np.zeros((0, k), np.float32), np.zeros((0,), np.int64))
    s_scores, s_labels = (seen["scores"], position[seen["label"]]) if seen is not None else empty
    u_scores, u_labels = (unseen["scores"], position[unseen["label"]]) if unseen is not None else empty
    out = calibration.gzsl_metrics(s_scores, s_labels, u_scores, u_labels, uni["unseen"])
    out.update(scored.get("info", {}))  # method-specific diagnostics (e.g. VSMR's transductive flag)
    curve = None
    if len(s_labels) and len(u_labels):
      _, s_curve, u_curve, out["ausuc"] = calibration.stacking_curve(s_scores, s_labels, u_scores, u_labels,
                                                                     uni["unseen"])
      curve = (s_curve, u_curve)
    else:
      out["ausuc"] = float("nan")
    if self.also_per_sample:
      unseen_cols = np.flatnonzero(uni["unseen"])
      if len(u_labels):
        zsl_pred = unseen_cols[np.argmax(u_scores[:, unseen_cols], 1)]
        out["zsl_acc_per_sample"] = float(np.mean(zsl_pred == u_labels))
        out["gzsl_unseen_per_sample"] = float(np.mean(np.argmax(u_scores, 1) == u_labels))
      if len(s_labels):
        out["gzsl_seen_per_sample"] = float(np.mean(np.argmax(s_scores, 1) == s_labels))
    return out, curve

  # ------------------------------------------------------------------ selection history
  def _load_history(self, step):
    """Best earlier record of this evaluator in this workdir's metrics.jsonl (steps < `step`)."""
    self._history_loaded = True
    path = self.workdir / "metrics.jsonl"
    if not path.exists():
      return
    for rec in metrics_lib.read_metrics(self.workdir):
      if rec.get("split") != self.name or rec["step"] >= step or "criterion" not in rec:
        continue
      crit = rec["criterion"]
      if isinstance(crit, (int, float)) and math.isfinite(crit) and (self._best is None or crit > self._best[0]):
        self._best = (crit, rec["step"], {m: rec.get(m) for m in METRICS})

  def _criterion(self, test, val):
    if self.select_on == "val":
      src = val
    elif self.select_on == "test_reference":
      src = test
    else:
      return float("inf")  # 'final': the latest evaluation is always the selected one
    h = src["gzsl_h"]
    return src["zsl_acc"] if not math.isfinite(h) else h

  def run(self, state):
    variables = {"params": state["params"], **state["model_state"]}
    step = int(jax.device_get(state["model_state"]["progress"]["step"]))
    if not self._history_loaded:
      self._load_history(step)
    test, test_curve = self._evaluate(variables, "test")
    record = dict(test)
    val = None
    if self.select_on == "val":
      val, _ = self._evaluate(variables, "val")
      record.update({f"val_{k}": v for k, v in val.items()})
    crit = self._criterion(test, val)
    improved = self._best is None or (math.isfinite(crit) and crit > self._best[0]) or self.select_on == "final"
    if improved:
      self._best = (crit, step, {m: test[m] for m in METRICS})
    record["criterion"] = crit if math.isfinite(crit) else float("nan")
    record["selected_on"] = SELECT_LABEL[self.select_on]
    if self.iterations_from:
      record["selected_on"] = f"val: iteration count selected in {self.iterations_from}, retrained on trainval"
    record["selected_step"] = self._best[1]
    record.update({f"selected_{m}": v for m, v in self._best[2].items()})
    if self.plot and test_curve is not None and jax.process_index() == 0:
      plots = self.workdir / "plots"
      plots.mkdir(parents=True, exist_ok=True)
      title = f"{self.trainer.dataset.name} {self.trainer.config.trainer} step {step}: test GZSL"
      op = (test["gzsl_seen"], test["gzsl_unseen"])
      calibration.plot_curve(plots / f"{self.name}_calibration.png", *test_curve, test["ausuc"], op, title)
      if improved:
        calibration.plot_curve(plots / f"{self.name}_calibration_selected.png", *test_curve, test["ausuc"], op,
                               title + f" (selected on {self.select_on})")
    return record
