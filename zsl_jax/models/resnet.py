"""torchvision-layout ResNet-50/101 in Flax Linen, for region features from torchvision weights.

DAZLE/VSMR train on the last conv map of an ImageNet ResNet-101 (2048 x 7 x 7 at 224 px). Users
bring torchvision checkpoints, so the module tree mirrors torchvision's names (`conv1`, `bn1`,
`layer3_22/conv2`, `layer1_0/downsample/0`) and `resnet_convert` maps a state dict onto it
one-to-one. Only inference is needed (frozen features): BatchNorm always uses the checkpoint's
running statistics (eps 1e-5). Inputs are NHWC; `features_only` returns the trunk's [N, h, w, 2048].
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from zsl_jax.errors import UserError

STAGE_SIZES = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}


class Bottleneck(nn.Module):
  """torchvision v1.5 bottleneck: stride on the 3x3 conv, 4x expansion."""
  width: int
  stride: int = 1
  downsample: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=True, momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    y = nn.relu(norm(name="bn1")(conv(self.width, (1, 1), name="conv1")(x)))
    y = conv(self.width, (3, 3), strides=(self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = norm(name="bn3")(conv(self.width * 4, (1, 1), name="conv3")(y))
    if self.downsample:
      x = _Downsample(self.width * 4, self.stride, self.dtype, name="downsample")(x)
    return nn.relu(y + x)


class _Downsample(nn.Module):
  """torchvision's `downsample` Sequential: `0` = 1x1 strided conv, `1` = BatchNorm."""
  features: int
  stride: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (1, 1), strides=(self.stride, self.stride), use_bias=False, dtype=self.dtype,
                name="0")(x)
    return nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="1")(x)


class ResNet(nn.Module):
  """Bottleneck ResNet; `features_only=True` drops avgpool/fc (the DAZLE region extractor)."""
  stage_sizes: tuple = STAGE_SIZES["resnet101"]
  num_classes: int = 1000
  features_only: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # x: [N, H, W, 3] normalised pixels
    x = x.astype(self.dtype)
    x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                name="conv1")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=self.dtype, name="bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, blocks in enumerate(self.stage_sizes):
      width = 64 * 2**stage
      for b in range(blocks):
        stride = 2 if (b == 0 and stage > 0) else 1
        x = Bottleneck(width, stride, downsample=(b == 0), dtype=self.dtype, name=f"layer{stage + 1}_{b}")(x)
    if self.features_only:
      return x  # [N, H/32, W/32, 2048]
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(x)


def resnet(arch="resnet101", **kwargs):
  """ResNet by torchvision name (resnet50 / resnet101 / resnet152)."""
  if arch not in STAGE_SIZES:
    raise UserError(f"unknown architecture {arch!r}; use one of {', '.join(STAGE_SIZES)}")
  return ResNet(stage_sizes=STAGE_SIZES[arch], **kwargs)
