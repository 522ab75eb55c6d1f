"""`python -m zsl_jax.tools.compare_zero_shot` on the HGR demo: a converted tiny CLIP (random weights) with every
variant, and an "HGR-Net run" workdir holding the same weights, which must reproduce the CLIP's plain row
exactly through the workdir restore. The table, the JSON and the plot are written.
"""
import json

import jax
import pytest

from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import engine as engine_lib
from zsl_jax.models import clip as clip_lib
from zsl_jax.projects.hgr import config as hgr_config
from zsl_jax.projects.hgr import trainer as hgr_trainer
from zsl_jax.projects.hgr.eval_suite import compare
from zsl_jax.projects.hgr.eval_suite import variants


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(converted CLIP folder, run workdir with the same weights at step 3, demo root, test images)."""
  root = tmp_path_factory.mktemp("compare")
  config = hgr_config.hgr_config("demo")
  config.data.demo_root = str(root / "demo")
  clip_config = hgr_trainer.clip_config(config.model)
  clip_lib.save_converted(root / "clip", clip_config, clip_lib.init_variables(clip_config, jax.random.PRNGKey(1)))
  engine = engine_lib.Engine(config, root / "run")
  state, _ = engine.restore_for_eval(source=str(root / "clip"))
  checkpointer = ckpt_lib.Checkpointer(root / "run" / ckpt_lib.CHECKPOINT_DIR)
  checkpointer.save(3, jax.device_get(state))  # host arrays: Orbax saves 8-device replicas far more slowly
  checkpointer.close()
  classes = next(iter(config.evals.values())).classes
  return root / "clip", root / "run", root / "demo", len(engine.trainer.index.rows("test", classes))


def test_compare_writes_the_table_json_and_plot(inputs, tmp_path):
  clip, run, demo_root, images = inputs
  out = tmp_path / "out"
  status = compare.main(["--demo", "--demo_root", str(demo_root), "--clip", str(clip), "--hgr_run", str(run),
                         "--out", str(out), "--cache_dir", str(tmp_path / "cache"), "--prompt_batch", "512"])
  assert status == 0
  table_path, json_path, plot_path = compare.outputs(out, next(iter(hgr_config.EVAL_SETS)))
  record = json.loads(json_path.read_text())
  rows = record["rows"]
  want = [("CLIP", v) for v in variants.VARIANTS] + [("HGR-Net", "plain")]
  assert [(r["weights"], r["variant"]) for r in rows] == want
  for r in rows:
    assert r.keys() == rows[0].keys() and r["count"] == images and r["skipped"] == 0
    assert 0 <= r["hca"] <= r["hit@1"] <= 1 and 0 <= r["mta"] <= 1 and len(r["depth_acc"]) == len(r["depth_images"])
  plain, hgr = rows[0], rows[-1]
  assert hgr["step"] == 3 and plain["step"] == 0
  assert {k: v for k, v in hgr.items() if k not in ("weights", "source", "step")} == \
      {k: v for k, v in plain.items() if k not in ("weights", "source", "step")}
  table = table_path.read_text().splitlines()
  assert table[2].startswith("| weights | variant | Hit@1 |") and len(table) == 4 + len(rows)
  assert table[4].startswith(f"| CLIP | plain | {plain['hit@1']:.3f} |")
  assert plot_path.stat().st_size > 1000
  assert len(list((tmp_path / "cache").glob("zeroshot_*.npy"))) == 1  # the ensemble, cached once


def test_an_unconverted_clip_is_one_line_error(tmp_path, capsys):
  (tmp_path / "RN50.pt").write_bytes(b"not a checkpoint")
  assert compare.main(["--demo", "--clip", str(tmp_path / "RN50.pt"), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "convert_clip" in err[0] and err[0].startswith("zsl_jax compare_zero_shot: error:")
  assert not (tmp_path / "out").exists()
