"""`zsl.retrain_on_trainval=True`: select on validation, retrain on trainval, test once.

The validation run (train split; validation classes as pseudo-unseen) picks an iteration count by
validation H. A second run then trains from scratch on all seen classes (trainval) for exactly that
many iterations and evaluates the test split once, at its last step, so no test number ever takes
part in a choice. It lives in `<workdir>/retrain_trainval/` with its own config.json, checkpoints
and metrics, and the same command resumes either stage.
"""
import logging
import pathlib

from zsl_jax import metrics as metrics_lib
from zsl_jax import projects
from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)

SUBDIR = "retrain_trainval"


def requested(config):
  zsl = config.get("zsl")
  return config.mode == "train" and zsl is not None and bool(zsl.get("retrain_on_trainval", False))


def check(config):
  """Fails before any training when the switch cannot work with this config."""
  if not requested(config):
    return
  if config.zsl.select_on != "val":
    raise UserError(f"zsl.retrain_on_trainval=True needs zsl.select_on='val' (got {config.zsl.select_on!r}): the "
                    f"iteration count must be selected on validation classes")
  _selection_evaluator(config)


def _is_gzsl(ev):
  """config.evals entry naming the gzsl evaluator, by short name or by module path."""
  kind = ev.get("type") or ""
  return projects.EVALUATORS.get(kind, kind) == projects.EVALUATORS["gzsl"]


def _selection_evaluator(config):
  names = [name for name, ev in config.evals.items() if _is_gzsl(ev)]
  if not names:
    raise UserError("zsl.retrain_on_trainval=True needs a gzsl evaluator in config.evals to select the iteration count")
  return names[0]


def selected_step(config, workdir):
  """The iteration count chosen on validation: `selected_step` of the validation run's last record.

  Process 0 reads its metrics.jsonl (only it writes one) and every process receives the value.
  """
  name = _selection_evaluator(config)

  def last_selected():
    if not (pathlib.Path(workdir) / "metrics.jsonl").exists():
      return -1
    records = [r for r in metrics_lib.read_metrics(workdir, split=name) if "selected_step" in r]
    return int(records[-1]["selected_step"]) if records else -1

  step = metrics_lib.decided_on_main(last_selected)
  if step < 0:
    raise UserError(f"{workdir}/metrics.jsonl has no {name!r} evaluation to select an iteration count from; "
                    f"give config.evals.{name}.every_steps a value below total_steps")
  if step == 0:
    raise UserError(f"validation selected step 0 (the untrained model) in {workdir}: nothing to retrain; "
                    f"train longer or check the validation metrics")
  return step


def retrain_config(config, step, validation_workdir):
  """The validation run's config, trained on trainval for `step` iterations and tested once."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.zsl.select_on = "final"
    c.zsl.retrain_on_trainval = False
    c.zsl.iterations_from = str(validation_workdir)
    c.total_steps = int(step)
    c.num_epochs = 0.0
    c.init.checkpoint = ""
    for ev in c.evals.values():
      ev.every_steps = 0  # evaluators run once, at the last step
      ev.at_start = False
  return c
