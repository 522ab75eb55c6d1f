"""Flax torchvision-layout ResNet vs torchvision itself (random weights, non-trivial BatchNorm)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax.errors import UserError
from zsl_jax.models import resnet
from zsl_jax.models import resnet_convert

pytestmark = pytest.mark.torch


def _randomised_torchvision(arch, seed):
  """torchvision ResNet with random BN statistics and affine terms, so BN conversion matters."""
  import torch  # pylint: disable=import-outside-toplevel

  from zsl_jax.models.torch_io import import_torchvision  # pylint: disable=import-outside-toplevel
  tv = import_torchvision()
  torch.manual_seed(seed)
  model = getattr(tv.models, arch)(weights=None).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        n = mod.num_features
        mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        mod.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
        mod.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
        mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
  return model


def _torch_trunk(model, x_nhwc):
  import torch  # pylint: disable=import-outside-toplevel
  trunk = torch.nn.Sequential(*list(model.children())[:-2])
  with torch.no_grad():
    return trunk(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)


def _rel(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def r101():
  model = _randomised_torchvision("resnet101", 0)
  return model, resnet_convert.torchvision_to_flax(model.state_dict())


def test_resnet101_region_map_parity(r101):
  torch_model, variables = r101
  x = np.random.default_rng(0).standard_normal((2, 224, 224, 3)).astype(np.float32)
  ref = _torch_trunk(torch_model, x)  # [2, 7, 7, 2048]
  model = resnet.resnet("resnet101")
  resnet_convert.check_variables(model, variables)
  out = np.asarray(jax.jit(model.apply)(variables, x))
  assert out.shape == ref.shape == (2, 7, 7, 2048)
  assert _rel(out, ref) <= 1e-5, _rel(out, ref)


def test_resnet101_parameter_count_and_names(r101):
  torch_model, variables = r101
  shapes = jax.eval_shape(resnet.resnet("resnet101", features_only=False).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 224, 224, 3)))
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(shapes["params"]))
  assert n_params == sum(p.numel() for p in torch_model.parameters()) == 44_549_160
  assert set(variables["params"]) >= {"conv1", "bn1", "layer1_0", "layer3_22", "layer4_2"}
  assert set(variables["params"]["layer2_0"]["downsample"]) == {"0", "1"}
  assert variables["batch_stats"]["layer4_2"]["bn3"]["var"].shape == (2048,)


def test_resnet50_logits_parity_small_input():
  """ResNet-50 with avgpool + fc at 64 px: checks the classifier head conversion as well."""
  import torch  # pylint: disable=import-outside-toplevel
  torch_model = _randomised_torchvision("resnet50", 1)
  x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  variables = resnet_convert.torchvision_to_flax(torch_model.state_dict(), include_fc=True)
  out = np.asarray(jax.jit(resnet.resnet("resnet50", features_only=False).apply)(variables, x))
  assert out.shape == (2, 1000) and _rel(out, ref) <= 1e-5, _rel(out, ref)
  assert resnet_convert.stage_sizes_from_state_dict(torch_model.state_dict()) == (3, 4, 6, 3)


def test_bfloat16_compute_stays_close():
  small = resnet.ResNet(stage_sizes=(1, 1, 1, 1))
  x = np.random.default_rng(2).standard_normal((1, 64, 64, 3)).astype(np.float32)
  variables = jax.jit(small.init)(jax.random.PRNGKey(0), x)
  f32 = np.asarray(jax.jit(small.apply)(variables, x))
  bf16 = np.asarray(jax.jit(resnet.ResNet(stage_sizes=(1, 1, 1, 1), dtype=jnp.bfloat16).apply)(variables, x),
                    np.float32)
  assert bf16.shape == (1, 2, 2, 2048)
  assert np.corrcoef(f32.ravel(), bf16.ravel())[0, 1] > 0.99


def test_region_grid_per_resolution():
  model = resnet.resnet("resnet101")
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
  for size, grid in ((224, 7), (448, 14)):
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    assert out.shape == (1, grid, grid, 2048)


def test_converter_rejects_wrong_checkpoints(tmp_path, r101):
  import torch  # pylint: disable=import-outside-toplevel
  _, variables = r101
  with pytest.raises(UserError, match="checkpoint does not fit the model"):
    resnet_convert.check_variables(resnet.resnet("resnet50"), variables)
  with pytest.raises(UserError, match="not a torchvision Bottleneck ResNet"):
    resnet_convert.stage_sizes_from_state_dict({"conv1.weight": np.zeros((64, 3, 7, 7))})
  torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
  with pytest.raises(UserError, match="not a torchvision Bottleneck ResNet"):
    resnet_convert.load_torchvision_checkpoint(tmp_path / "odd.pth")
  (tmp_path / "junk.pth").write_bytes(b"junk")
  with pytest.raises(UserError, match="not a readable torch checkpoint"):
    resnet_convert.load_torchvision_checkpoint(tmp_path / "junk.pth")
