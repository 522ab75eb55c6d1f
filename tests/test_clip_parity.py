"""Numerical parity of the Flax CLIP with open_clip (torch) on random weights, through the public API.

Real-size RN50 / RN101 / ViT-B/32 (quickgelu = OpenAI) are converted from a torch file with the
`convert_clip` CLI and loaded with `zsl_jax.models.clip.load`; small custom CLIPs cover the other
checkpoint kinds (TorchScript, fp16 HGR-Net with `module.`, safetensors), BatchNorm train mode,
the torch-free round trip and the error messages.
"""
import functools
import os
import sys
import textwrap
import zipfile

import jax
import numpy as np
import pytest

from tests import cli
from zsl_jax.errors import UserError
from zsl_jax.models import clip as clip_lib
from zsl_jax.text import tokenize
from zsl_jax.tools import convert_clip

pytestmark = pytest.mark.torch

PROMPTS = ["a photo of a tench.", "a low resolution photo of the great white shark.", "x",
           "itap of a hunting dog, a dog that hunts.", "", "a photo of a cassette player in a video game."]


@pytest.fixture(scope="module")
def oc():
  from zsl_jax.models.torch_io import import_open_clip  # pylint: disable=import-outside-toplevel
  return import_open_clip()


def _randomize_norms(model, seed=0):
  """open_clip zero-inits bn3 and leaves BN/LN at identity; random affine/statistics make the test bite."""
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if not t.is_floating_point():
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      elif name.endswith("running_mean") or (name.endswith(".bias") and t.ndim == 1):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      elif name.endswith(".weight") and t.ndim == 1:
        t.copy_(1 + torch.randn(t.shape, generator=g) * 0.2)
  return model


def _rel(a, b):
  """max over the batch of ||a - b|| / ||b||."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float((np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)).max())


def _torch_encode(model, images, tokens, train=False):
  import torch  # pylint: disable=import-outside-toplevel
  model.train(train)
  with torch.no_grad():
    img = model.encode_image(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
    txt = model.encode_text(torch.from_numpy(tokens).long())
  return img.numpy(), txt.numpy()


def _images(n, res, seed=0):
  return np.random.RandomState(seed).randn(n, res, res, 3).astype(np.float32)


def _tiny_open_clip(oc, vit=False, seed=0):
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  cfg = oc.model
  vision = (cfg.CLIPVisionCfg(layers=2, width=128, image_size=64, patch_size=16) if vit else
            cfg.CLIPVisionCfg(layers=(1, 2, 1, 1), width=16, image_size=64, patch_size=None))
  text = cfg.CLIPTextCfg(width=128, heads=2, layers=2)
  return _randomize_norms(cfg.CLIP(64, vision, text, quick_gelu=True).eval(), seed)


@pytest.fixture(scope="module", params=["RN50", "RN101", "ViT-B-32"])
def real_model(request, oc, tmp_path_factory):
  """(name, torch features, our features) for one real-size architecture, converted via file + CLI."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  ref = _randomize_norms(oc.create_model(f"{request.param}-quickgelu").eval())
  tmp = tmp_path_factory.mktemp(request.param)
  torch.save(ref.state_dict(), tmp / "model.pt")
  assert convert_clip.main([str(tmp / "model.pt"), str(tmp / "converted")]) == 0
  ours = clip_lib.load(str(tmp / "converted"))
  res = ours.config.image_resolution
  images, tokens = _images(4, res), tokenize(PROMPTS)
  want = _torch_encode(ref, images, tokens)
  got = (np.asarray(ours.encode_image(images)), np.asarray(ours.encode_text(tokens)),
         np.asarray(ours.encode_text(tokens, truncate=False)))
  return request.param, ours, want, got


def test_real_size_parity(real_model):
  name, ours, (want_img, want_txt), (img, txt, txt_full) = real_model
  assert ours.config == clip_lib.get_config(name)
  assert img.shape == want_img.shape == (4, ours.config.embed_dim)
  assert _rel(img, want_img) < 1e-5, name
  assert _rel(txt, want_txt) < 1e-5, name
  assert _rel(txt, txt_full) < 1e-6, name  # truncated (16 tokens) vs full 77


@pytest.mark.parametrize("name", ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16",
                                  "ViT-L-14", "ViT-L-14-336"])
def test_parameter_counts_and_inferred_architecture(oc, name):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.device("meta"):  # shapes only, nothing materialised
    ref = oc.model.CLIP(**oc.get_model_config(f"{name}-quickgelu"))
  config = clip_lib.config_from_state_dict(ref.state_dict())
  assert config == clip_lib.get_config(name)
  assert clip_lib.count_params(config) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("vit", [False, True], ids=["resnet", "vit"])
def test_tiny_parity_from_state_dict(oc, vit):
  ref = _tiny_open_clip(oc, vit)
  ours = clip_lib.load(ref.state_dict())
  images, tokens = _images(4, 64), tokenize(PROMPTS)
  want_img, want_txt = _torch_encode(ref, images, tokens)
  assert _rel(ours.encode_image(images), want_img) < 1e-5
  assert _rel(ours.encode_text(tokens), want_txt) < 1e-5


def test_batchnorm_train_mode_matches_torch(oc):
  """bn_use_running_average=False + mutable batch_stats: torch train() outputs and running stats."""
  import flax  # pylint: disable=import-outside-toplevel
  ref = _tiny_open_clip(oc)
  ours = clip_lib.load(ref.state_dict())
  images = _images(4, 64, seed=1)
  want_img, _ = _torch_encode(ref, images, tokenize(["a"]), train=True)
  module = clip_lib.CLIP(ours.config, bn_use_running_average=False)
  apply = jax.jit(functools.partial(module.apply, method=clip_lib.CLIP.encode_image, mutable=["batch_stats"]))
  img, updates = apply(ours.variables, images)
  assert _rel(img, want_img) < 1e-5
  stats = flax.traverse_util.flatten_dict(updates["batch_stats"], sep=".")
  sd = ref.state_dict()
  for name, value in stats.items():
    torch_name = name.rsplit(".", 1)[0] + (".running_mean" if name.endswith("mean") else ".running_var")
    np.testing.assert_allclose(value, sd[torch_name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
  assert len(stats) == 2 * sum(1 for k in sd if k.endswith("running_mean"))


def test_hgr_fp16_module_prefix_state_dict(oc, tmp_path):
  """HGR-Net saves clip_model.state_dict() after build_model's fp16 cast, maybe under DataParallel."""
  import torch  # pylint: disable=import-outside-toplevel
  ref = _tiny_open_clip(oc)
  half = {}
  for k, v in ref.state_dict().items():
    is_weight = v.is_floating_point() and (v.ndim > 1 or "attn" in k) and "embedding" not in k
    half[f"module.{k}"] = v.half() if is_weight else v
  torch.save(half, tmp_path / "clip_3")
  ref.load_state_dict({k[len("module."):]: v.float() for k, v in half.items()})
  ours = clip_lib.load(str(tmp_path / "clip_3"))
  images, tokens = _images(4, 64), tokenize(PROMPTS)
  want_img, want_txt = _torch_encode(ref, images, tokens)
  assert _rel(ours.encode_image(images), want_img) < 1e-5
  assert _rel(ours.encode_text(tokens), want_txt) < 1e-5


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_archive_and_safetensors(oc, tmp_path):
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  ref = _tiny_open_clip(oc, vit=True)
  ref.register_buffer("input_resolution", torch.tensor(64))  # int metadata as in OpenAI's archives
  traced = torch.jit.trace(ref, (torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)),
                           check_trace=False)
  torch.jit.save(traced, tmp_path / "ViT.pt")
  assert any(n.endswith("constants.pkl") for n in zipfile.ZipFile(tmp_path / "ViT.pt").namelist())
  save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "open_clip.safetensors")
  images, tokens = _images(4, 64), tokenize(PROMPTS)
  want_img, want_txt = _torch_encode(ref, images, tokens)
  for path in ("ViT.pt", "open_clip.safetensors"):
    ours = clip_lib.load(str(tmp_path / path))
    assert _rel(ours.encode_image(images), want_img) < 1e-5, path
    assert _rel(ours.encode_text(tokens), want_txt) < 1e-5, path


def test_round_trip_loads_without_torch(oc, tmp_path):
  """torch file -> convert_clip CLI (subprocess) -> Orbax -> load in a process that never imports torch."""
  import torch  # pylint: disable=import-outside-toplevel
  ref = _tiny_open_clip(oc)
  torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}},
             tmp_path / "epoch_3.pt")  # open_clip training-checkpoint layout
  images, tokens = _images(4, 64), tokenize(PROMPTS)
  want_img, want_txt = _torch_encode(ref, images, tokens)
  np.save(tmp_path / "images.npy", images)
  np.save(tmp_path / "tokens.npy", tokens)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = cli.run([sys.executable, "-m", "zsl_jax.tools.convert_clip", tmp_path / "epoch_3.pt", tmp_path / "ckpt"],
                env=env, check=True)
  assert "custom" in out.stdout
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from zsl_jax.models import clip
      model = clip.load({str(tmp_path / 'ckpt')!r})
      np.save({str(tmp_path / 'img.npy')!r}, np.asarray(model.encode_image(np.load({str(tmp_path / 'images.npy')!r}))))
      np.save({str(tmp_path / 'txt.npy')!r}, np.asarray(model.encode_text(np.load({str(tmp_path / 'tokens.npy')!r}))))
      assert 'torch' not in sys.modules, 'torch was imported'
      """)
  cli.run([sys.executable, "-c", script], env=env, check=True)
  assert _rel(np.load(tmp_path / "img.npy"), want_img) < 1e-5
  assert _rel(np.load(tmp_path / "txt.npy"), want_txt) < 1e-5


def test_wrong_architecture_and_truncated_files_are_user_errors(oc, tmp_path, capsys):
  import torch  # pylint: disable=import-outside-toplevel
  tv = oc.model.CLIP(64, oc.model.CLIPVisionCfg(layers=2, width=128, image_size=64, patch_size=16,
                                                 attentional_pool=True),
                     oc.model.CLIPTextCfg(width=128, heads=2, layers=2), quick_gelu=True)
  with pytest.raises(UserError, match="unexpected") as e:
    clip_lib.load(tv.state_dict())
  assert "\n" not in str(e.value)
  from zsl_jax.models.torch_io import import_torchvision  # pylint: disable=import-outside-toplevel
  with pytest.raises(UserError, match="not an OpenAI-style CLIP state dict"):
    clip_lib.load(import_torchvision().models.resnet18().state_dict())
  sd = _tiny_open_clip(oc).state_dict()
  torch.save(sd, tmp_path / "full.pt")
  data = (tmp_path / "full.pt").read_bytes()
  (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
  with pytest.raises(UserError, match="truncated or corrupt"):
    clip_lib.load(str(tmp_path / "cut.pt"))
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  save_file(sd, tmp_path / "full.safetensors")
  data = (tmp_path / "full.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 3])
  with pytest.raises(UserError, match="truncated or corrupt"):
    clip_lib.load(str(tmp_path / "cut.safetensors"))
  assert convert_clip.main([str(tmp_path / "cut.pt"), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("zsl_jax convert_clip: error: ") and "is not a readable torch checkpoint" in err
  assert err.count("\n") == 1


def test_clip_preprocess_matches_open_clip(oc):
  """zsl_jax.data.transforms.clip_preprocess == open_clip's eval transform on real photos."""
  sklearn_images = pytest.importorskip("sklearn.datasets.images")
  from zsl_jax.data.images import decode_rgb  # pylint: disable=import-outside-toplevel
  from zsl_jax.data.transforms import clip_preprocess  # pylint: disable=import-outside-toplevel
  transform = oc.image_transform(224, is_train=False)
  folder = os.path.dirname(sklearn_images.__file__)
  for name in ("china.jpg", "flower.jpg"):
    img, _ = decode_rgb(os.path.join(folder, name))
    for crop in (img, img.crop((0, 0, 300, 427))):  # landscape and portrait
      want = transform(crop).numpy().transpose(1, 2, 0)
      got = clip_preprocess(crop)
      assert got.shape == (224, 224, 3)
      np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
