"""README command 1 end to end: the HGR-Net demo trains, checkpoints, evaluates, and learns.

The demo's unseen classes (21 of 39) are scored at step 0 (untrained) and after training; TOR
and POR must improve by a clear margin. Then eval mode restores the checkpoint and reproduces
the final metrics exactly.
"""
import json
import subprocess
import sys

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


@pytest.mark.torch
def test_official_hgr_checkpoint_evaluates_directly(demo_run, tmp_path):
  """An HGR-Net `clip_<epoch>` file (torch state dict, fp16 weights, DataParallel prefix) is
  evaluated as is, and gives the same metrics as its converted Orbax copy."""
  torch = pytest.importorskip("torch")
  from zsl_jax.models.torch_io import import_open_clip  # pylint: disable=import-outside-toplevel
  _, data = demo_run
  oc = import_open_clip()
  torch.manual_seed(0)
  model = oc.model.CLIP(64, oc.model.CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=64, patch_size=None),
                        oc.model.CLIPTextCfg(width=128, heads=2, layers=2), quick_gelu=True)
  sd = {f"module.{k}": (v.half() if v.is_floating_point() and v.ndim > 1 else v) for k, v in model.state_dict().items()}
  torch.save(sd, tmp_path / "clip_3")
  # OpenAI's loader infers text heads as width // 64, so the config names the same sizes.
  sizes = ("--config.model.custom.transformer_width=128", "--config.model.custom.transformer_heads=2",
           f"--config.data.demo_root={data}", "--config.mode=eval")
  cli.run_main(CONFIG, tmp_path / "direct", *sizes, f"--config.init.checkpoint={tmp_path / 'clip_3'}")
  proc = subprocess.run(
      [sys.executable, "-m", "zsl_jax.tools.convert_clip", str(tmp_path / "clip_3"), str(tmp_path / "converted")],
      cwd=cli.REPO_ROOT, env=cli.env(), capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  cli.run_main(CONFIG, tmp_path / "converted_eval", *sizes, f"--config.init.checkpoint={tmp_path / 'converted'}")
  direct = metrics.read_metrics(tmp_path / "direct", split="21k_d")
  converted = metrics.read_metrics(tmp_path / "converted_eval", split="21k_d")
  assert len(direct) == len(converted) == 1 and direct[0]["count"] == 21 * 16
  for key in METRICS:
    assert direct[0][key] == converted[0][key], key
