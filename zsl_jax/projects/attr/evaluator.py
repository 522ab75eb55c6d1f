"""ZSL / GZSL evaluation with model selection, shared by DAZLE and VSMR.

The metrics are those of the official DAZLE code (`eval_zs_gzsl`: per-class accuracies and H).
Every call scores the test split (`zsl_acc gzsl_seen gzsl_unseen gzsl_h ausuc` of this checkpoint)
and, with `select_on='val'`, the validation split (val_* keys: train classes seen, validation
classes pseudo-unseen). It keeps the evaluation whose selection criterion (validation H; test H in
the reference protocol `select_on='test_reference'`; validation ZSL accuracy when there are no
seen test images) is best so far and reports its test numbers as `selected_*` with `selected_step`
and `selected_on`. Test-selected numbers say so in `selected_on`. The history is re-read from
`metrics.jsonl` (records of this evaluator's name, its `config.evals` key), so resumed runs and
`mode=eval` in the same workdir continue the same selection.

Calibrated stacking (calibration.py) beside the γ = 0 numbers: `gzsl_h_best` and `cal_gamma_best`
(the best H over a split's exact curve, per split), `seen_only_acc` (γ = -inf), and on the test
split `gzsl_{seen,unseen,h}_cal` at `cal_gamma`, the validation split's best γ when there is one
(`cal_gamma_from`), so the calibrated test numbers never use test labels to choose γ.

Uses from the trainer's offer: `universe(kind)` (class ids, unseen mask, query splits),
`scores(variables, universe, map_batches)` (the method's scoring, run through this module's
`map_batches(source, fn)`, the core eval loop), `num_classes`, `select_on`, `iterations_from` and
`title`. This module owns batching, gathering and metrics.
"""
import functools
import logging
import math

import jax
import numpy as np

from zsl_jax import metrics as metrics_lib
from zsl_jax.errors import UserError
from zsl_jax.evaluators import base as eval_base
from zsl_jax.projects.attr import calibration

logger = logging.getLogger(__name__)

METRICS = ("zsl_acc", "gzsl_seen", "gzsl_unseen", "gzsl_h", "ausuc", "gzsl_seen_cal", "gzsl_unseen_cal", "gzsl_h_cal")
SELECT_LABEL = {"val": "val", "test_reference": "test (reference protocol: selected on the test set)",
                "final": "none (final checkpoint)"}


class Evaluator(eval_base.Evaluator):
  """Args (from `config.evals.<name>`): batch_size (global, rounded up to the device count), plot
  (calibration curves as PNG), also_per_sample (per-sample accuracies besides per-class ones),
  select_calibrated (select on the best H over the calibration curve instead of H at γ = 0: for
  methods whose seen and unseen scores are on unrelated scales, such as VSMR's cosine to class means
  and to E(a), where H at γ = 0 is near 0 and its ranking noise)."""

  def __init__(self, context, batch_size=128, plot=True, also_per_sample=False, select_calibrated=False):
    super().__init__(context)
    select_on = self.offer["select_on"]  # decides the training split too, so the trainer owns it
    if select_on not in SELECT_LABEL:
      raise UserError(f"zsl.select_on={select_on!r}; use 'val', 'test_reference' or 'final'")
    self.select_on = select_on
    self.iterations_from = self.offer.get("iterations_from", "")  # a retrain_on_trainval run
    self.batch_size = eval_base.round_batch_size(batch_size, self.mesh)
    self.plot = plot
    self.also_per_sample = also_per_sample
    self.select_calibrated = bool(select_calibrated)
    self.map_batches = functools.partial(eval_base.map_batches, mesh=self.mesh, global_batch_size=self.batch_size)
    self._best = None  # (criterion, step, record)
    self._history_loaded = False

  # ------------------------------------------------------------------ one universe
  def _evaluate(self, variables, kind):
    uni = self.offer["universe"](kind)
    scored = self.offer["scores"](variables, uni, self.map_batches)
    position = np.full(self.offer["num_classes"], -1, np.int64)
    position[uni["classes"]] = np.arange(len(uni["classes"]))
    seen, unseen = scored["seen"], scored["unseen"]
    k = len(uni["classes"])
    empty = (np.zeros((0, k), np.float32), np.zeros((0,), np.int64))
    s_scores, s_labels = (seen["scores"], position[seen["label"]]) if seen is not None else empty
    u_scores, u_labels = (unseen["scores"], position[unseen["label"]]) if unseen is not None else empty
    out = calibration.gzsl_metrics(s_scores, s_labels, u_scores, u_labels, uni["unseen"])
    out.update(scored.get("info", {}))  # method-specific diagnostics (e.g. VSMR's transductive flag)
    curve, scored_arrays = None, (s_scores, s_labels, u_scores, u_labels, uni["unseen"])
    if len(s_labels) and len(u_labels):
      gammas, s_curve, u_curve, out["ausuc"] = calibration.stacking_curve(*scored_arrays)
      curve = (s_curve, u_curve)
      out["cal_gamma_best"], out["gzsl_h_best"] = calibration.best_gamma(gammas, s_curve, u_curve)
      out["seen_only_acc"] = float(s_curve[0])  # γ = -inf: seen images among the seen classes alone
    else:
      out["ausuc"] = out["cal_gamma_best"] = out["gzsl_h_best"] = out["seen_only_acc"] = float("nan")
    if self.also_per_sample:
      unseen_cols = np.flatnonzero(uni["unseen"])
      if len(u_labels):
        zsl_pred = unseen_cols[np.argmax(u_scores[:, unseen_cols], 1)]
        out["zsl_acc_per_sample"] = float(np.mean(zsl_pred == u_labels))
        out["gzsl_unseen_per_sample"] = float(np.mean(np.argmax(u_scores, 1) == u_labels))
      if len(s_labels):
        out["gzsl_seen_per_sample"] = float(np.mean(np.argmax(s_scores, 1) == s_labels))
    return out, curve, scored_arrays

  @staticmethod
  def _calibrate(test, arrays, val):
    """Calibrated stacking on the test split with γ of the best validation H (else of the best test H).

    `gzsl_h_best` is the test curve's own maximum (an upper bound: γ chosen on the test labels).
    """
    source = val if val is not None and math.isfinite(val.get("cal_gamma_best", float("nan"))) else test
    gamma = source["cal_gamma_best"]
    out = {"cal_gamma": gamma, "cal_gamma_from": "val" if source is val else "test"}
    if math.isfinite(gamma):
      cal = calibration.calibrated_metrics(*arrays, gamma)
      out.update({f"{k}_cal": cal[k] for k in ("gzsl_seen", "gzsl_unseen", "gzsl_h")})
    else:
      out.update({f"{k}_cal": float("nan") for k in ("gzsl_seen", "gzsl_unseen", "gzsl_h")})
    return out

  # ------------------------------------------------------------------ selection history
  def _load_history(self, step):
    """Best earlier record of this evaluator in this workdir's metrics.jsonl (steps < `step`).

    Read on process 0 (the only writer of the file) and broadcast, so every host selects alike.
    """
    self._history_loaded = True

    def best():
      found = None
      if not (self.workdir / "metrics.jsonl").exists():
        return found
      for rec in metrics_lib.read_metrics(self.workdir, split=self.name):
        crit = rec.get("criterion")
        if rec["step"] >= step or not isinstance(crit, (int, float)) or not math.isfinite(crit):
          continue
        if found is None or crit > found[0]:
          found = (crit, rec["step"], {m: rec.get(m) for m in METRICS})
      return found

    self._best = metrics_lib.decided_on_main(best)

  def _criterion(self, test, val):
    if self.select_on == "val":
      src = val
    elif self.select_on == "test_reference":
      src = test
    else:
      return float("inf")  # 'final': the latest evaluation is always the selected one
    h = src["gzsl_h_best" if self.select_calibrated else "gzsl_h"]
    return src["zsl_acc"] if not math.isfinite(h) else h

  def run(self, state, step):
    variables = eval_base.model_variables(state)
    if not self._history_loaded:
      self._load_history(step)
    test, test_curve, test_arrays = self._evaluate(variables, "test")
    val = None
    if self.select_on == "val":
      val, _, _ = self._evaluate(variables, "val")
    test.update(self._calibrate(test, test_arrays, val))
    record = dict(test)
    if val is not None:
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
      title = f"{self.offer['title']} step {step}: test GZSL"
      op = (test["gzsl_seen"], test["gzsl_unseen"])
      calibration.plot_curve(plots / f"{self.name}_calibration.png", *test_curve, test["ausuc"], op, title)
      if improved:
        calibration.plot_curve(plots / f"{self.name}_calibration_selected.png", *test_curve, test["ausuc"], op,
                               title + f" (selected on {self.select_on})")
    return record
