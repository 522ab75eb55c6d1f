"""`zsl.retrain_on_trainval`: the DAZLE demo selects an iteration count on validation classes,
retrains on trainval for exactly that many iterations and evaluates the test split once."""
import json

from tests import cli
from zsl_jax import metrics

CONFIG = "configs/dazle_awa2.py:demo"


def test_retrain_on_trainval_uses_the_validation_selected_iterations(tmp_path):
  work, data = tmp_path / "run", f"--config.data.demo_dir={tmp_path / 'data'}"
  cli.run_main(CONFIG, work, data, "--config.zsl.retrain_on_trainval=True")
  selection = metrics.read_metrics(work, split="gzsl")
  assert [r["selected_on"] for r in selection] == ["val"] * len(selection) and len(selection) > 1
  step = selection[-1]["selected_step"]
  retrained = work / "retrain_trainval"
  config = json.loads((retrained / "config.json").read_text())
  assert config["zsl"]["select_on"] == "final" and config["zsl"]["retrain_on_trainval"] is False
  assert config["total_steps"] == step and config["zsl"]["iterations_from"] == str(work)
  (test,) = metrics.read_metrics(retrained, split="gzsl")  # the test split, evaluated once
  assert test["step"] == step and "val_zsl_acc" not in test
  assert test["selected_on"] == f"val: iteration count selected in {work}, retrained on trainval"
  assert test["zsl_acc"] > 0.45, test  # 5 unseen classes: chance 0.2
  assert len(metrics.read_metrics(retrained, split="train")) == step // 10  # logged every 10 of `step` steps
  lines = (retrained / "metrics.jsonl").read_text()
  cli.run_main(CONFIG, work, data, "--config.zsl.retrain_on_trainval=True")  # both stages are complete
  assert (retrained / "metrics.jsonl").read_text() == lines


def test_retrain_needs_validation_selection(tmp_path):
  proc = cli.run_main(CONFIG, tmp_path, "--config.zsl.retrain_on_trainval=True",
                      "--config.zsl.select_on=test_reference", check=False)
  assert proc.returncode == 2
  assert "needs zsl.select_on='val'" in proc.stderr.strip().splitlines()[-1]
  assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written
