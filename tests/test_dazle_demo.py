"""End to end: `configs/dazle_awa2.py:demo` trains, selects on validation, writes metrics and plots;
`mode=eval` on its checkpoint reproduces the numbers."""
import json

import pytest

from tests import cli

METRICS = ("zsl_acc", "gzsl_seen", "gzsl_unseen", "gzsl_h", "ausuc")


def _records(workdir, split="gzsl"):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("dazle_demo")
  work = root / "run"
  cli.run_main("configs/dazle_awa2.py:demo", work, f"--config.data.demo_dir={root / 'data'}")
  return root, work


def test_demo_learns_unseen_classes(demo_run):
  _, work = demo_run
  final = _records(work)[-1]
  for m in METRICS:
    assert m in final and f"selected_{m}" in final
  assert final["selected_on"] == "val"
  # 5 unseen classes: chance is 0.2 for ZSL accuracy.
  assert final["zsl_acc"] > 0.45, final
  assert final["gzsl_unseen"] > 0.35 and final["gzsl_seen"] > 0.3, final
  assert final["val_gzsl_h"] > 0.4, final
  assert (work / "plots" / "gzsl_calibration.png").stat().st_size > 1000
  assert (work / "plots" / "gzsl_calibration_selected.png").exists()


@pytest.mark.parametrize("dataset", ["cub", "sun"])
def test_cub_and_sun_demos_learn_unseen_classes(tmp_path, dataset):
  """The CUB (uniform sampler, momentum 0.9) and SUN (β off) recipes on the same demo data."""
  cli.run_main(f"configs/dazle_{dataset}.py:demo", tmp_path / "run", f"--config.data.demo_dir={tmp_path / 'data'}")
  final = _records(tmp_path / "run")[-1]
  assert final["selected_on"] == "val"
  assert final["zsl_acc"] > 0.45 and final["val_zsl_acc"] > 0.45, final  # measured: CUB 0.95, SUN 0.71


def test_eval_mode_reproduces_metrics(demo_run):
  root, work = demo_run
  other = root / "eval"
  cli.run_main("configs/dazle_awa2.py:demo", other, f"--config.data.demo_dir={root / 'data'}", "--config.mode=eval",
               f"--config.init.checkpoint={work}")
  trained, evaluated = _records(work)[-1], _records(other)[-1]
  assert evaluated["step"] == trained["step"]
  for m in METRICS + tuple(f"val_{m}" for m in METRICS):
    assert evaluated[m] == pytest.approx(trained[m], abs=1e-6), m


def _tool(module, *args):
  import sys  # pylint: disable=import-outside-toplevel
  return cli.run([sys.executable, "-m", module, *args], env=cli.env())


def test_attention_maps_tool(demo_run):
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  root, work = demo_run
  images = []
  for i in range(2):
    images.append(root / f"img{i}.jpg")
    Image.fromarray(np.random.default_rng(i).integers(0, 255, (120, 200, 3)).astype(np.uint8)).save(images[-1])
  proc = _tool("zsl_jax.tools.attention_maps", "--run", work, "--rows", 3, 500, "--images", *images,
               "--out", root / "maps", "--top", 4)
  cli.expect_rc(proc, 0)
  for img in images:
    png = root / "maps" / f"{img.stem}_attention.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
  bad = _tool("zsl_jax.tools.attention_maps", "--run", work, "--rows", 3, "--images", *images, "--out", root / "m2")
  cli.expect_rc(bad, 2)
  assert "one row per image" in bad.stderr


def test_import_official_checkpoint_and_evaluate(demo_run):
  """An official-layout torch state dict: CLI -> .npz, and eval mode from the .pth and the .npz agree."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  from tests.test_dazle_parity import TorchDAZLE  # pylint: disable=import-outside-toplevel
  from zsl_jax.projects.attr.data import region_features  # pylint: disable=import-outside-toplevel
  root, _ = demo_run
  hdf5 = next((root / "data").glob("AWA2_*/feature_map_ResNet_101_AWA2.hdf5"))
  meta = region_features.load_dazle_hdf5_meta(hdf5)
  seen = np.unique(meta["labels"][meta["trainval_loc"]])
  unseen = np.unique(meta["labels"][meta["test_unseen_loc"]])
  ref = TorchDAZLE(meta["w2v_att"], meta["att"], seen, unseen, normalize_V=True, normalize_F=True, is_bias=True,
                   feature_dim=meta["feature_shape"][0])
  pth = root / "official.pth"
  torch.save(ref.state_dict(), pth)
  npz = root / "official.npz"
  proc = _tool("zsl_jax.tools.import_dazle", "--checkpoint", pth, "--hdf5", hdf5, "--normalize-V", "--out", npz)
  cli.expect_rc(proc, 0)
  with np.load(npz) as z:
    np.testing.assert_allclose(z["params/W_2"], ref.W_2.detach().numpy(), rtol=1e-6)
  results = []
  for source in (pth, npz):
    out = root / f"eval_{source.suffix[1:]}"
    cli.run_main("configs/dazle_awa2.py:demo", out, f"--config.data.demo_dir={root / 'data'}", "--config.mode=eval",
                 f"--config.init.checkpoint={source}")
    results.append(_records(out)[-1])
  for m in METRICS:
    assert results[0][m] == pytest.approx(results[1][m], abs=1e-9)
  assert results[0]["step"] == 0
