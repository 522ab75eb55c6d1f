"""Model selection survives a stop and resume when the gzsl evaluator has another config key.

The selection history is re-read from metrics.jsonl by the evaluator's name, which is its
`config.evals` key. A run stopped after a checkpoint and an evaluation, then resumed with the same
command, must report the selections of the same run done in one go.
"""
import pytest

from tests import cli
from tests import dazle_renamed_eval_config
from zsl_jax import metrics
from zsl_jax.errors import UserError
from zsl_jax.projects.attr import retrain

CONFIG = "tests/dazle_renamed_eval_config.py"
KEY = dazle_renamed_eval_config.KEY
STOP, END = 20, 40  # evaluations every 10 steps; the demo's validation H is still 0 up to step 30
SELECTED = ("selected_step",) + tuple(f"selected_{m}" for m in ("zsl_acc", "gzsl_seen", "gzsl_unseen", "gzsl_h"))


def test_selected_step_survives_a_resume_under_a_renamed_key(tmp_path):
  data = f"--config.data.demo_dir={tmp_path / 'data'}"
  once, resumed = tmp_path / "once", tmp_path / "resumed"
  cli.run_main(CONFIG, once, data, f"--config.total_steps={END}", "--config.checkpoint.every_steps=10")
  cli.run_main(CONFIG, resumed, data, f"--config.total_steps={STOP}", "--config.checkpoint.every_steps=10")
  assert (resumed / "checkpoints" / str(STOP)).is_dir()
  cli.run_main(CONFIG, resumed, data, f"--config.total_steps={END}", "--config.checkpoint.every_steps=10")
  want, got = metrics.read_metrics(once, split=KEY), metrics.read_metrics(resumed, split=KEY)
  assert [r["step"] for r in got] == [r["step"] for r in want] == [10, 20, 30, 40]
  # The check has teeth only if an evaluation after the stop keeps a selection made before it.
  assert any(r["step"] > STOP and r["selected_step"] <= STOP for r in want), want
  for w, g in zip(want, got):
    for key in SELECTED:
      assert g[key] == pytest.approx(w[key], abs=1e-9), (g["step"], key)
  assert not metrics.read_metrics(resumed, split="gzsl")  # nothing written under the short name


def test_retrain_finds_the_gzsl_evaluator_by_module_path():
  config = dazle_renamed_eval_config.get_config()
  assert retrain._selection_evaluator(config) == KEY  # pylint: disable=protected-access
  config.evals[KEY].type = "gzsl"
  assert retrain._selection_evaluator(config) == KEY  # pylint: disable=protected-access
  config.evals[KEY].type = "hierarchical"
  with pytest.raises(UserError, match="needs a gzsl evaluator"):
    retrain._selection_evaluator(config)  # pylint: disable=protected-access
