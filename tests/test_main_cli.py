"""The `zsl_jax.main` command line: config errors, NaN guard, eval mode, files it writes."""
import json

import pytest

from tests import cli
from zsl_jax import metrics

CONFIG = "tests/toy_config.py"


def test_unknown_config_key_fails_with_one_line(tmp_path):
  proc = cli.run_main(CONFIG, tmp_path, "--config.no_such_key=1", check=False)
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr
  assert "no_such_key" in lines[0]
  assert not (tmp_path / "config.json").exists()


def test_nested_unknown_key_and_bad_value(tmp_path):
  proc = cli.run_main(CONFIG, tmp_path, "--config.optim.lrr=0.1", check=False)
  assert proc.returncode != 0 and "lrr" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  proc = cli.run_main(CONFIG, tmp_path, "--config.total_steps=ten", check=False)
  assert proc.returncode != 0 and "ten" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_nan_stops_the_run_naming_the_step(tmp_path):
  proc = cli.run_main(CONFIG, tmp_path, "--config.toy.nan_at_step=6", check=False)
  assert proc.returncode == 3, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert "at step 6" in last and "last good checkpoint: step 4" in last, last
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [4]  # Nothing after the divergence was checkpointed.


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  cli.run_main(CONFIG, workdir)
  return workdir


def test_train_writes_config_metrics_tensorboard(trained):
  config = json.loads((trained / "config.json").read_text())
  assert config["trainer"] == "tests.toy_trainer" and config["total_steps"] == 12
  train = metrics.read_metrics(trained, split="train")
  assert [r["step"] for r in train] == list(range(1, 13))
  assert all({"loss", "lr", "grad_norm"} <= set(r) for r in train)
  assert train[-1]["loss"] < train[0]["loss"]
  heldout = metrics.read_metrics(trained, split="heldout")
  assert len(heldout) == 1 and heldout[0]["count"] == 100 and heldout[0]["accuracy"] > 0.5
  events = list((trained / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0


def test_eval_mode_reproduces_the_metrics(trained, tmp_path):
  cli.run_main(CONFIG, tmp_path, "--config.mode=eval", f"--config.init.checkpoint={trained}")
  expected = metrics.read_metrics(trained, split="heldout")[-1]
  got = metrics.read_metrics(tmp_path, split="heldout")
  assert len(got) == 1 and got[0]["step"] == 12
  assert got[0]["accuracy"] == expected["accuracy"] and got[0]["count"] == expected["count"]


def test_eval_mode_without_checkpoint_says_what_to_pass(tmp_path):
  proc = cli.run_main(CONFIG, tmp_path, "--config.mode=eval", check=False)
  assert proc.returncode == 2
  assert "no zsl_jax checkpoint found" in proc.stderr.strip().splitlines()[-1]


def test_changed_config_keeps_the_previous_config_json(trained, tmp_path):
  cli.run_main(CONFIG, tmp_path, "--config.total_steps=2")
  cli.run_main(CONFIG, tmp_path, "--config.total_steps=4")
  assert json.loads((tmp_path / "config.1.json").read_text())["total_steps"] == 2
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 4
  steps = [r["step"] for r in metrics.read_metrics(tmp_path, split="train")]
  assert steps == [1, 2, 3, 4]  # The second command resumed from step 2.
