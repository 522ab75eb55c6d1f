"""CLIP's pre-LN transformer blocks, shared by the text tower and the ViT image tower.

OpenAI CLIP (and open_clip with `quick_gelu`) uses torch `nn.MultiheadAttention` with a fused
`in_proj`, QuickGELU MLPs and LayerNorms computed in float32. Submodule names follow the torch
state dict (`resblocks.<i>.attn.in_proj`, `ln_1`, `mlp.c_fc`, ...) so that regexes written against
torch parameter names (per-group learning rates, freezing) also match the Flax tree.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax.errors import UserError

# model.remat_text / model.remat_image: what a tower's residual blocks keep for the backward pass.
#   none:          every activation (fastest, most memory)
#   blocks:        only each block's input; the block's forward runs again in the backward pass
#   dots_saveable: matmul outputs; elementwise work (norms, softmax, GELU) runs again
REMAT_POLICIES = ("none", "blocks", "dots_saveable")


def remat(block_cls, policy, static_argnums=()):
  """`block_cls` under rematerialisation `policy` (one of REMAT_POLICIES); parameter names are unchanged."""
  if policy == "none":
    return block_cls
  if policy == "blocks":
    return nn.remat(block_cls, static_argnums=static_argnums)
  if policy == "dots_saveable":
    return nn.remat(block_cls, policy=jax.checkpoint_policies.dots_saveable, static_argnums=static_argnums)
  raise UserError(f"remat policy {policy!r} is not one of: {', '.join(REMAT_POLICIES)}")


def quick_gelu(x):
  """OpenAI's GELU approximation x * sigmoid(1.702 x); the pretrained weights expect it."""
  return x * jax.nn.sigmoid(1.702 * x)


def layer_norm(name):
  """A float32 LayerNorm whose parameters sit directly under `name` (`name/scale`, `name/bias`)."""
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def ln_apply(ln, x):
  """Applies a float32 LayerNorm and returns the input dtype."""
  return ln(x.astype(jnp.float32)).astype(x.dtype)


def causal_mask(length):
  """Boolean [L, L] mask, True where query i may attend to key j (j <= i)."""
  return np.tril(np.ones((length, length), dtype=bool))


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention (self-attention, fused in_proj, batch-first here).

  `mask`: bool, True where query i may attend to key j; [L, L] for all rows, or [B, 1, L, L] per row
  (packed prompts).
  """
  width: int
  heads: int
  dtype: jnp.dtype = jnp.float32
  in_std: float | None = None
  out_std: float | None = None

  @nn.compact
  def __call__(self, x, mask=None):
    b, seq_len, d = x.shape  # [B, L, D]
    head_dim = d // self.heads
    in_init = nn.initializers.normal(self.in_std or d ** -0.5)
    out_init = nn.initializers.normal(self.out_std or d ** -0.5)
    qkv = nn.Dense(3 * d, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=in_init,
                   bias_init=nn.initializers.zeros, name="in_proj")(x)  # [B, L, 3D]
    q, k, v = jnp.split(qkv, 3, axis=-1)
    q = q.reshape(b, seq_len, self.heads, head_dim) * (head_dim ** -0.5)
    k = k.reshape(b, seq_len, self.heads, head_dim)
    v = v.reshape(b, seq_len, self.heads, head_dim)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)  # [B, H, L, L]
    if mask is not None:
      logits = jnp.where(mask, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, seq_len, d)
    return nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=out_init,
                    bias_init=nn.initializers.zeros, name="out_proj")(out)


class Mlp(nn.Module):
  """c_fc -> QuickGELU -> c_proj (torch names)."""
  width: int
  dtype: jnp.dtype = jnp.float32
  fc_std: float | None = None
  proj_std: float | None = None

  @nn.compact
  def __call__(self, x):
    fc_init = nn.initializers.normal(self.fc_std or (2 * self.width) ** -0.5)
    proj_init = nn.initializers.normal(self.proj_std or self.width ** -0.5)
    x = nn.Dense(4 * self.width, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=fc_init,
                 name="c_fc")(x)
    x = quick_gelu(x)
    return nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=proj_init,
                    name="c_proj")(x)


class ResidualAttentionBlock(nn.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""
  width: int
  heads: int
  layers: int = 12
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    proj_std = (self.width ** -0.5) * ((2 * self.layers) ** -0.5)
    attn_std = self.width ** -0.5
    fc_std = (2 * self.width) ** -0.5
    h = ln_apply(layer_norm("ln_1"), x)
    x = x + MultiheadAttention(self.width, self.heads, self.dtype, in_std=attn_std, out_std=proj_std,
                               name="attn")(h, mask)
    h = ln_apply(layer_norm("ln_2"), x)
    return x + Mlp(self.width, self.dtype, fc_std=fc_std, proj_std=proj_std, name="mlp")(h)


class _BlockStack(nn.Module):
  """The fields of a stack of `layers` residual attention blocks (Transformer and its resblocks container)."""
  width: int
  layers: int
  heads: int
  dtype: jnp.dtype = jnp.float32
  remat: str = "none"  # one of REMAT_POLICIES, applied to every block


class Transformer(_BlockStack):
  """A stack of residual attention blocks under `resblocks/<i>` (torch: `resblocks.<i>`)."""

  @nn.compact
  def __call__(self, x, mask=None):
    return _ResBlocks(self.width, self.layers, self.heads, self.dtype, self.remat, name="resblocks")(x, mask)


class _ResBlocks(_BlockStack):
  """Container so parameters read `transformer/resblocks/<i>/...`."""

  @nn.compact
  def __call__(self, x, mask=None):
    block = remat(ResidualAttentionBlock, self.remat)
    for i in range(self.layers):
      x = block(self.width, self.heads, self.layers, self.dtype, name=str(i))(x, mask)
    return x
