"""CLIP's ModifiedResNet image tower (RN50, RN101, RN50x4/x16/x64), NHWC.

Differences from a torchvision ResNet that the pretrained weights depend on: a 3-conv stem with an
average pool instead of a max pool, anti-aliased strides (stride-2 blocks average-pool before the
last 1x1 conv and in the shortcut), and a multi-head attention pool in place of global average
pooling. BatchNorm matches torch exactly, including the unbiased running-variance update, because
HGR-Net keeps the model in eval mode (running statistics frozen, affine parameters trained) and a
user may still want torch's train-mode update.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

_F32 = jnp.float32


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d over NHWC: `scale`/`bias` params, `mean`/`var` in `batch_stats`.

  With `use_running_average=False` it normalises with the batch's biased variance and, when the
  `batch_stats` collection is mutable, updates the running statistics as torch does (momentum 0.1,
  unbiased variance).
  """
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  zero_scale: bool = False

  @nn.compact
  def __call__(self, x, use_running_average=True):
    c = x.shape[-1]
    scale_init = nn.initializers.zeros if self.zero_scale else nn.initializers.ones
    scale = self.param("scale", scale_init, (c,), _F32)
    bias = self.param("bias", nn.initializers.zeros, (c,), _F32)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), _F32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), _F32))
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(_F32)
      mean = xf.mean(axis=(0, 1, 2))
      var = jnp.square(xf - mean).mean(axis=(0, 1, 2))  # biased, used to normalise
      if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
        n = x.size // c
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * jax.lax.stop_gradient(mean)
        ra_var.value = (1 - m) * ra_var.value + m * jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
    inv = scale * jax.lax.rsqrt(var + self.epsilon)  # [C]
    shift = bias - mean * inv
    return x * inv.astype(self.dtype) + shift.astype(self.dtype)


def _conv(features, kernel, dtype, name, stride=1):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, param_dtype=_F32, name=name)


def _avg_pool(x, k):
  return nn.avg_pool(x, (k, k), strides=(k, k)) if k > 1 else x


class _Downsample(nn.Module):
  """Shortcut: AvgPool(stride) -> 1x1 conv (`0`) -> BN (`1`), named as torch's Sequential."""
  features: int
  stride: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, use_running_average=True):
    x = _avg_pool(x, self.stride)
    x = _conv(self.features, 1, self.dtype, "0")(x)
    return BatchNorm(dtype=self.dtype, name="1")(x, use_running_average)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> AvgPool(stride) -> 1x1 (x4), ReLU, projection shortcut when shapes change."""
  planes: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average=True):  # [N, H, W, Cin]
    ura = use_running_average
    bn = lambda name, **kw: BatchNorm(dtype=self.dtype, name=name, **kw)
    out = nn.relu(bn("bn1")(_conv(self.planes, 1, self.dtype, "conv1")(x), ura))
    out = nn.relu(bn("bn2")(_conv(self.planes, 3, self.dtype, "conv2")(out), ura))
    out = _avg_pool(out, self.stride)
    out = bn("bn3", zero_scale=True)(_conv(self.planes * 4, 1, self.dtype, "conv3")(out), ura)
    identity = x
    if self.stride > 1 or x.shape[-1] != self.planes * 4:
      identity = _Downsample(self.planes * 4, self.stride, self.dtype, name="downsample")(x, ura)
    return nn.relu(out + identity)  # [N, H/stride, W/stride, 4 * planes]


class _ResLayer(nn.Module):
  """`layer<k>`: blocks named `0`, `1`, ... as in torch's Sequential."""
  planes: int
  blocks: int
  stride: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x, use_running_average=True):
    for i in range(self.blocks):
      x = Bottleneck(self.planes, self.stride if i == 0 else 1, self.dtype, name=str(i))(x, use_running_average)
    return x


class AttentionPool2d(nn.Module):
  """Multi-head attention with the spatial mean as the only query; output [N, output_dim]."""
  spacial_dim: int
  embed_dim: int
  heads: int
  output_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [N, H, W, C]
    n, h, w, c = x.shape
    pos = self.param("positional_embedding", nn.initializers.normal(self.embed_dim ** -0.5),
                     (self.spacial_dim ** 2 + 1, self.embed_dim), _F32)
    x = x.reshape(n, h * w, c)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)  # [N, HW+1, C]
    x = x + pos.astype(self.dtype)[None]
    std = self.embed_dim ** -0.5
    dense = lambda feats, name: nn.Dense(feats, dtype=self.dtype, param_dtype=_F32, name=name,
                                         kernel_init=nn.initializers.normal(std))
    head_dim = c // self.heads
    q = dense(c, "q_proj")(x[:, :1]).reshape(n, 1, self.heads, head_dim) * (head_dim ** -0.5)
    k = dense(c, "k_proj")(x).reshape(n, h * w + 1, self.heads, head_dim)
    v = dense(c, "v_proj")(x).reshape(n, h * w + 1, self.heads, head_dim)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(_F32)  # [N, heads, 1, HW+1]
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(n, c)
    return dense(self.output_dim, "c_proj")(out)


class ModifiedResNet(nn.Module):
  """CLIP ResNet: stem, four stages of Bottlenecks (4x widths), attention pool."""
  layers: tuple
  output_dim: int
  heads: int
  input_resolution: int = 224
  width: int = 64
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average=True):  # [N, R, R, 3]
    x = x.astype(self.dtype)
    ura = use_running_average
    bn = lambda name: BatchNorm(dtype=self.dtype, name=name)
    half = self.width // 2
    x = nn.relu(bn("bn1")(_conv(half, 3, self.dtype, "conv1", stride=2)(x), ura))
    x = nn.relu(bn("bn2")(_conv(half, 3, self.dtype, "conv2")(x), ura))
    x = nn.relu(bn("bn3")(_conv(self.width, 3, self.dtype, "conv3")(x), ura))
    x = _avg_pool(x, 2)  # [N, R/4, R/4, width]
    for k, blocks in enumerate(self.layers):
      x = _ResLayer(self.width * 2 ** k, blocks, 1 if k == 0 else 2, self.dtype,
                    name=f"layer{k + 1}")(x, ura)
    # [N, R/32, R/32, 32 * width]
    return AttentionPool2d(self.input_resolution // 32, self.width * 32, self.heads, self.output_dim,
                           self.dtype, name="attnpool")(x)
