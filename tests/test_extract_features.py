"""Feature extraction end to end on a generated image set with a small torchvision Bottleneck ResNet."""
import os
import pickle
import shutil
import sys

import h5py
import numpy as np
import pytest
import scipy.io

from tests import cli
from zsl_jax.data.images import decode_rgb
from zsl_jax.data.transforms import imagenet_preprocess
from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import dataset as zsl_dataset
from zsl_jax.projects.attr.data import demo as synthetic_zsl
from zsl_jax.projects.attr.data import xlsa17
from zsl_jax.projects.attr.tools import extract_features as ef

pytestmark = pytest.mark.torch
RES = 64  # 2x2 regions: the same code path as 224 -> 7x7, at CPU-test cost.
DAZLE_KEYS = {"feature_map", "labels", "trainval_loc", "test_seen_loc", "test_unseen_loc", "att", "original_att",
              "w2v_att"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """12 CUB-layout JPEGs, xlsa17 files, word vectors, and a 1-1-1-1 Bottleneck ResNet checkpoint."""
  import torch  # pylint: disable=import-outside-toplevel

  from zsl_jax.models.torch_io import import_torchvision  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("extract")
  data = synthetic_zsl.make_demo_images(root, "CUB", num_classes=4, images_per_class=3, num_attributes=6)
  tv = import_torchvision()
  torch.manual_seed(0)
  model = tv.models.resnet.ResNet(tv.models.resnet.Bottleneck, [1, 1, 1, 1]).eval()
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.uniform_(-0.1, 0.1)
        mod.running_var.uniform_(0.5, 1.5)
        mod.bias.uniform_(-0.1, 0.1)
  torch.save(model.state_dict(), root / "weights.pth")
  x = np.stack([imagenet_preprocess(decode_rgb(p)[0], RES, RES) for p in data["files"]])
  with torch.no_grad():
    trunk = torch.nn.Sequential(*list(model.children())[:-2])
    ref = trunk(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()  # [N, 2048, 2, 2]
  with open(root / "w2v.pkl", "wb") as f:
    pickle.dump(np.random.default_rng(0).standard_normal((6, 5)), f, protocol=3)
  return {**data, "root": root, "weights": str(root / "weights.pth"), "ref": ref, "w2v": str(root / "w2v.pkl")}


def _args(setup, out, *extra):
  return ["--dataset", "CUB", "--images", str(setup["images"]), "--xlsa17", str(setup["root"]), "--weights",
          setup["weights"], "--out", str(out), "--resolution", str(RES), "--batch-size", "8", "--num-workers", "2",
          "--no-progress", *extra]


def _rel(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


def test_cli_writes_dazle_layout_readable_by_zsl_reader(setup, tmp_path, capsys):
  out = tmp_path / "feature_map_ResNet_101_CUB.hdf5"
  assert ef.main(_args(setup, out, "--w2v", setup["w2v"])) == 0
  assert "complete; computed 12 images this run" in capsys.readouterr().out
  with h5py.File(out) as f:
    assert DAZLE_KEYS <= set(f) and "_done" not in f
    fm = f["feature_map"]
    assert fm.shape == (12, 2048, 2, 2) and fm.dtype == np.float32 and fm.compression == "gzip"
    assert f["att"].shape == (4, 6) and f["att"].dtype == np.float64 and f["w2v_att"].shape == (6, 5)
    np.testing.assert_array_equal(f["labels"][()], setup["labels"])
    assert _rel(fm[()], setup["ref"]) <= 1e-5
  ds = zsl_dataset.load_zsl_dataset("CUB", hdf5=out)
  assert ds.features.num_regions == 4 and ds.features.feature_dim == 2048
  ex = ds.features[7]
  np.testing.assert_allclose(ex["features"], setup["ref"][7].reshape(2048, 4).T, rtol=1e-5, atol=1e-5 * 50)
  assert ex["label"] == setup["labels"][7]
  assert ds.class_names == [f"class_{c:02d}" for c in range(4)] and ds.unseen_classes.tolist() == [3]
  # A re-run on a complete file does nothing.
  assert ef.extract("CUB", setup["images"], setup["root"], setup["weights"], out, resolution=RES, batch_size=8,
                    progress=False)["computed"] == 0


def test_interrupted_extraction_resumes_without_recomputing(setup, tmp_path):
  out = tmp_path / "f.hdf5"
  kw = dict(resolution=RES, batch_size=8, num_workers=2, progress=False)
  first = ef.extract("CUB", setup["images"], setup["root"], setup["weights"], out, max_images=5, **kw)
  assert first["computed"] == 5 and not first["complete"]
  with pytest.raises(UserError, match="unfinished extraction \\(7 images left\\)"):
    zsl_dataset.load_zsl_dataset("CUB", hdf5=out)
  with h5py.File(out, "r+") as f:
    assert f["_done"][()].tolist() == [1] * 5 + [0] * 7
    f["feature_map"][:5] = 7.0  # A finished row that is recomputed would lose this marker value.
  other_settings = r"unfinished extraction with different settings \(resolution: file 64, this run 96\)"
  with pytest.raises(UserError, match=other_settings):
    ef.extract("CUB", setup["images"], setup["root"], setup["weights"], out, **{**kw, "resolution": 96})
  second = ef.extract("CUB", setup["images"], setup["root"], setup["weights"], out, **kw)
  assert second["computed"] == 7 and second["already_done"] == 5 and second["complete"]
  with h5py.File(out) as f:
    fm = f["feature_map"][()]
    assert "_done" not in f
  assert (fm[:5] == 7.0).all()
  assert _rel(fm[5:], setup["ref"][5:]) <= 1e-5


def test_finished_file_with_other_weights_resolution_or_dtype_is_refused(setup, tmp_path, capsys):
  """A finished file never passes for the features of other weights, resolution or dtype (issue 16): exit 2."""
  import torch  # pylint: disable=import-outside-toplevel
  out = tmp_path / "f.hdf5"
  assert ef.extract("CUB", setup["images"], setup["root"], setup["weights"], out, resolution=RES, batch_size=8,
                    num_workers=2, progress=False)["complete"]
  before = out.read_bytes()
  other = {k: v + 0.01 if v.is_floating_point() else v for k, v in torch.load(setup["weights"]).items()}
  torch.save(other, tmp_path / "other.pth")
  argv = _args(setup, out, "--dtype", "bfloat16")
  argv[argv.index("--weights") + 1] = str(tmp_path / "other.pth")
  proc = cli.run([sys.executable, "-m", "zsl_jax.tools.extract_features", *argv], env=cli.env(JAX_PLATFORMS="cpu"))
  errors = [line for line in proc.stderr.splitlines() if line.startswith("zsl_jax extract_features: error: ")]
  assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
  assert "is a finished extraction with different settings (dtype: file float32, this run bfloat16, " \
         "weights_sha256: file " in errors[0] and "choose another --out" in errors[0], errors[0]
  assert ef.main(_args(setup, out, "--resolution", "96")) == 2
  assert "different settings (resolution: file 64, this run 96)" in capsys.readouterr().err
  assert out.read_bytes() == before


def test_undecodable_and_missing_images(setup, tmp_path):
  images = tmp_path / "images"
  shutil.copytree(setup["images"], images)
  files = [str(images / os.path.relpath(p, setup["images"])) for p in setup["files"]]
  with open(files[2], "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
  os.remove(files[9])
  kw = dict(resolution=RES, batch_size=8, num_workers=2, progress=False)
  with pytest.raises(UserError, match="1 of 12 images are missing .*--skip-missing"):
    ef.extract("CUB", images, setup["root"], setup["weights"], tmp_path / "a.hdf5", **kw)
  assert not (tmp_path / "a.hdf5").exists()
  stats = ef.extract("CUB", images, setup["root"], setup["weights"], tmp_path / "a.hdf5", skip_missing=True, **kw)
  assert stats["corrupt"] == [2] and stats["missing"] == [files[9]] and stats["computed"] == 11
  with h5py.File(tmp_path / "a.hdf5") as f:
    fm = f["feature_map"][()]
  assert not fm[2].any() and not fm[9].any()
  keep = [i for i in range(12) if i not in (2, 9)]
  assert _rel(fm[keep], setup["ref"][keep]) <= 1e-5


def test_image_layout_detection(tmp_path):
  """CUB's tarball has one CUB_200_2011 level, DAZLE's rule expects two: both resolve."""
  stored = ["/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images/001.A/a_1.jpg"]
  for layout in ("CUB_200_2011/CUB_200_2011/images", "CUB_200_2011/images", "images"):
    root = tmp_path / layout.replace("/", "_")
    (root / layout / "001.A").mkdir(parents=True)
    (root / layout / "001.A" / "a_1.jpg").write_bytes(b"x")
    assert xlsa17.resolve_image_layout("CUB", str(root), stored)(stored[0]) == str(root / layout / "001.A" / "a_1.jpg")
  with pytest.raises(UserError, match="no image of res101.mat's image_files was found"):
    xlsa17.resolve_image_layout("CUB", str(tmp_path), ["/x/y/z/w/v/none.jpg"])


def test_cli_bad_inputs_end_with_one_line(setup, tmp_path, capsys):
  def run(argv, match):
    assert ef.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err, err

  run(_args(setup, tmp_path / "o.hdf5")[:1] + ["ImageNet"] + _args(setup, tmp_path / "o.hdf5")[2:],
      "unknown dataset 'ImageNet'")
  with open(tmp_path / "w2v.pkl", "wb") as f:
    pickle.dump(np.zeros((7, 5)), f)
  run(_args(setup, tmp_path / "o.hdf5", "--w2v", str(tmp_path / "w2v.pkl")), "have 7 rows but att_splits.mat has 6")
  bad = tmp_path / "xlsa17"
  bad.mkdir()
  shutil.copy(setup["root"] / "res101.mat", bad / "res101.mat")
  scipy.io.savemat(bad / "att_splits.mat", {"att": np.eye(3)})
  argv = _args(setup, tmp_path / "o.hdf5")
  argv[argv.index("--xlsa17") + 1] = str(bad)
  run(argv, "lacks original_att, allclasses_names")
  run(_args(setup, tmp_path / "o.hdf5", "--batch-size", "6"), "not a positive multiple of the 8 devices")
  assert not (tmp_path / "o.hdf5").exists()


def test_cli_bad_weights_files_end_with_one_line(setup, tmp_path, capsys):
  """Random bytes and a whole pickled model: one `zsl_jax extract_features: error:` line each, nothing written."""
  import torch  # pylint: disable=import-outside-toplevel
  (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(3000))
  torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "model.pth")
  for name, match in (("random.pth", "is not a readable torch checkpoint"),
                      ("model.pth", "is not a plain weights file: it pickles Python objects")):
    argv = _args(setup, tmp_path / "o.hdf5")
    argv[argv.index("--weights") + 1] = str(tmp_path / name)
    assert ef.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("zsl_jax extract_features: error: ") and err.count("\n") == 1 and match in err, err
  assert not (tmp_path / "o.hdf5").exists()
