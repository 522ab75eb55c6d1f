"""CLIP's VisionTransformer image tower (ViT-B/32, B/16, L/14, L/14@336), NHWC.

Patchify conv without bias, a class token, learned positional embedding, `ln_pre` before the
transformer (CLIP's addition to ViT), `ln_post` on the class token and a bias-free projection.
Parameter names follow the torch state dict.
"""
import flax.linen as nn
import jax.numpy as jnp

from zsl_jax.models.clip import text_transformer as tt

_F32 = jnp.float32


class VisionTransformer(nn.Module):
  """Image [N, R, R, 3] -> features [N, output_dim]."""
  input_resolution: int
  patch_size: int
  width: int
  layers: int
  heads: int
  output_dim: int
  dtype: jnp.dtype = jnp.float32
  remat: str = "none"  # tt.REMAT_POLICIES, per transformer block

  @nn.compact
  def __call__(self, x):
    scale = self.width ** -0.5
    grid = self.input_resolution // self.patch_size
    x = nn.Conv(self.width, (self.patch_size, self.patch_size), strides=(self.patch_size,) * 2,
                padding="VALID", use_bias=False, dtype=self.dtype, param_dtype=_F32,
                name="conv1")(x.astype(self.dtype))  # [N, g, g, W]
    n = x.shape[0]
    x = x.reshape(n, -1, self.width)  # [N, g*g, W]
    cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,), _F32)
    pos = self.param("positional_embedding", nn.initializers.normal(scale), (grid * grid + 1, self.width),
                     _F32)
    cls = jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.width))
    x = jnp.concatenate([cls, x], axis=1) + pos.astype(self.dtype)[None]  # [N, g*g+1, W]
    x = tt.ln_apply(tt.layer_norm("ln_pre"), x)
    x = tt.Transformer(self.width, self.layers, self.heads, self.dtype, self.remat, name="transformer")(x)
    x = tt.ln_apply(tt.layer_norm("ln_post"), x[:, 0])  # [N, W]
    proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.output_dim), _F32)
    return x @ proj.astype(self.dtype)
