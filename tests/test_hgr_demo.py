"""README command 1 end to end: the HGR-Net demo trains, checkpoints, evaluates, and learns.

The demo's unseen classes (21 of 39) are scored at step 0 (untrained) and after training; TOR
and POR must improve by a clear margin. Then eval mode restores the checkpoint and reproduces
the final metrics exactly.
"""
import json

import pytest

from tests import cli
from zsl_jax import metrics

CONFIG = "configs/hgr_rn50.py:demo"
METRICS = ("hit@1", "hit@2", "hit@5", "hit@10", "hit@20", "tor", "por")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("hgr_demo")
  data = tmp_path_factory.mktemp("hgr_demo_data")
  cli.run_main(CONFIG, workdir, f"--config.data.demo_root={data}", timeout=900)
  return workdir, data


def test_demo_learns_on_unseen_classes(demo_run):
  workdir, _ = demo_run
  rows = metrics.read_metrics(workdir, split="21k_d")
  assert [r["step"] for r in rows] == [0, 600]
  start, end = rows
  for r in rows:
    assert set(METRICS) <= set(r) and r["num_classes"] == 21 and r["count"] == 21 * 16 and r["skipped"] == 0
  assert end["tor"] >= start["tor"] + 0.3, (start, end)
  assert end["por"] >= start["por"] + 0.1, (start, end)
  train = metrics.read_metrics(workdir, split="train")
  assert train[-1]["loss"] < 0.5 * train[0]["loss"]
  levels = json.loads((workdir / "plots" / "levels_21k_d.json").read_text())
  assert len(levels["accuracy"]) == 3 and sum(levels["images"]) > 0
  assert (workdir / "plots" / "levels_21k_d.png").stat().st_size > 1000
  assert (workdir / "checkpoints" / "600").is_dir()


def test_eval_mode_reproduces_demo_metrics(demo_run, tmp_path):
  workdir, data = demo_run
  cli.run_main(CONFIG, tmp_path, "--config.mode=eval", f"--config.init.checkpoint={workdir}",
               f"--config.data.demo_root={data}")
  got = metrics.read_metrics(tmp_path, split="21k_d")
  want = metrics.read_metrics(workdir, split="21k_d")[-1]
  assert len(got) == 1 and got[0]["step"] == 600
  for key in METRICS + ("por", "path_ratio", "count"):
    assert got[0][key] == want[key], key
