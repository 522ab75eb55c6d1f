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

from zsl_jax.errors import UserError
from zsl_jax.models.clip import text_transformer as tt

_F32 = jnp.float32
CONV_IMPLS = ("auto", "xla", "matmul")  # model.conv_impl


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


def conv_impl(impl):
  """'xla' (lax.conv) or 'matmul' (im2col) for `impl`; 'auto' is matmul on CPU, xla elsewhere."""
  if impl not in CONV_IMPLS:
    raise UserError(f"model.conv_impl={impl!r} is not one of: {', '.join(CONV_IMPLS)}")
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "xla"
  return impl


class Conv(nn.Module):
  """Bias-free k x k convolution with torch's padding k // 2: nn.Conv's `kernel` [k, k, Cin, F] and init.

  `impl="matmul"` computes it as one matmul over the k * k shifted views (im2col). XLA's CPU
  convolution is slow on small maps (RN50 at 64 px: the 3 x 3 convolutions of the 2 x 2 layer4
  maps ran at 0.3 GFLOP/s, forward and backward 140 ms per conv vs 5 ms as a matmul), and im2col was
  1.6-2x faster on the 4 x 4 to 7 x 7 maps too. On GPUs `xla` keeps cuDNN's convolutions.
  """
  features: int
  kernel: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):  # [N, H, W, Cin]
    k, s, pad = self.kernel, self.stride, self.kernel // 2
    w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), _F32)
    x, w = x.astype(self.dtype), w.astype(self.dtype)
    if conv_impl(self.impl) == "xla":
      return jax.lax.conv_general_dilated(x, w, (s, s), ((pad, pad), (pad, pad)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if k == 1 and s == 1:
      return x @ w[0, 0]
    n, h, wd, c = x.shape
    ho, wo = (h + 2 * pad - k) // s + 1, (wd + 2 * pad - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    views = [xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)]
    return jnp.concatenate(views, axis=-1) @ w.reshape(k * k * c, self.features)  # [N, Ho, Wo, F]


def _conv(features, kernel, dtype, name, stride=1, impl="auto"):
  return Conv(features, kernel, stride, dtype, impl, name=name)


def _avg_pool(x, k):
  return nn.avg_pool(x, (k, k), strides=(k, k)) if k > 1 else x


class _Downsample(nn.Module):
  """Shortcut: AvgPool(stride) -> 1x1 conv (`0`) -> BN (`1`), named as torch's Sequential."""
  features: int
  stride: int
  dtype: jnp.dtype
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, use_running_average=True):
    x = _avg_pool(x, self.stride)
    x = _conv(self.features, 1, self.dtype, "0", impl=self.conv_impl)(x)
    return BatchNorm(dtype=self.dtype, name="1")(x, use_running_average)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> AvgPool(stride) -> 1x1 (x4), ReLU, projection shortcut when shapes change."""
  planes: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, use_running_average=True):  # [N, H, W, Cin]
    ura = use_running_average
    bn = lambda name, **kw: BatchNorm(dtype=self.dtype, name=name, **kw)
    conv = lambda feats, k, name: _conv(feats, k, self.dtype, name, impl=self.conv_impl)
    out = nn.relu(bn("bn1")(conv(self.planes, 1, "conv1")(x), ura))
    out = nn.relu(bn("bn2")(conv(self.planes, 3, "conv2")(out), ura))
    out = _avg_pool(out, self.stride)
    out = bn("bn3", zero_scale=True)(conv(self.planes * 4, 1, "conv3")(out), ura)
    identity = x
    if self.stride > 1 or x.shape[-1] != self.planes * 4:
      identity = _Downsample(self.planes * 4, self.stride, self.dtype, self.conv_impl, name="downsample")(x, ura)
    return nn.relu(out + identity)  # [N, H/stride, W/stride, 4 * planes]


class _ResLayer(nn.Module):
  """`layer<k>`: blocks named `0`, `1`, ... as in torch's Sequential."""
  planes: int
  blocks: int
  stride: int
  dtype: jnp.dtype
  conv_impl: str = "auto"
  remat: str = "none"  # tt.REMAT_POLICIES, per Bottleneck

  @nn.compact
  def __call__(self, x, use_running_average=True):
    block = tt.remat(Bottleneck, self.remat, static_argnums=(2,))  # use_running_average is a Python bool
    for i in range(self.blocks):
      x = block(self.planes, self.stride if i == 0 else 1, self.dtype, self.conv_impl, name=str(i))(
          x, use_running_average)
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
  conv_impl: str = "auto"  # CONV_IMPLS
  remat: str = "none"      # tt.REMAT_POLICIES, per Bottleneck

  @nn.compact
  def __call__(self, x, use_running_average=True):  # [N, R, R, 3]
    x = x.astype(self.dtype)
    ura = use_running_average
    bn = lambda name: BatchNorm(dtype=self.dtype, name=name)
    conv = lambda feats, name, stride=1: _conv(feats, 3, self.dtype, name, stride, self.conv_impl)
    half = self.width // 2
    x = nn.relu(bn("bn1")(conv(half, "conv1", stride=2)(x), ura))
    x = nn.relu(bn("bn2")(conv(half, "conv2")(x), ura))
    x = nn.relu(bn("bn3")(conv(self.width, "conv3")(x), ura))
    x = _avg_pool(x, 2)  # [N, R/4, R/4, width]
    for k, blocks in enumerate(self.layers):
      x = _ResLayer(self.width * 2 ** k, blocks, 1 if k == 0 else 2, self.dtype, self.conv_impl, self.remat,
                    name=f"layer{k + 1}")(x, ura)
    # [N, R/32, R/32, 32 * width]
    return AttentionPool2d(self.input_resolution // 32, self.width * 32, self.heads, self.output_dim,
                           self.dtype, name="attnpool")(x)
