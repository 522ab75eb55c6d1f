"""Rematerialisation policies and the CPU convolution trade memory and speed, never the numbers.

Every `model.remat_text` / `model.remat_image` policy gives the same features and gradients as
`none` with the same parameter tree, and keeps less for the backward pass; the im2col convolution
(`conv_impl="matmul"`, the CPU default) equals XLA's with the same initial weights; bad values
end in one line naming the field.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hgr_rn50
from zsl_jax.errors import UserError
from zsl_jax.models import clip as clip_lib
from zsl_jax.models.clip import modified_resnet
from zsl_jax.models.clip import packing
from zsl_jax.models.clip import text_transformer as tt
from zsl_jax.projects.hgr import negatives
from zsl_jax.projects.hgr import trainer as hgr_trainer
from zsl_jax.text import tokenizer

RESNET = clip_lib.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=(1, 2, 1, 1), vision_width=16,
                             vision_patch_size=None, transformer_width=64, transformer_heads=2, transformer_layers=3)
VIT = clip_lib.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=16,
                          transformer_width=64, transformer_heads=2, transformer_layers=2)


def _inputs(config):
  images = jax.random.normal(jax.random.PRNGKey(1), (3, config.image_resolution, config.image_resolution, 3))
  tokens = tokenizer.tokenize([f"a photo of a {n}." for n in ("dog", "great dane", "sea anemone", "x", "tree")])
  lengths = negatives.prompt_lengths(tokens)
  layout = packing.Layout(row_tokens=32, row_slots=4, chunk_rows=2, chunks=1)
  packed, pool, _, _ = packing.pack(tokens, lengths, layout)
  return images, jnp.asarray(packed), jnp.asarray(pool)


def _loss(module, images, packed, pool):
  def f(params, batch_stats):
    v = {"params": params, "batch_stats": batch_stats}
    img = module.apply(v, images, method=clip_lib.CLIP.encode_image)
    txt = module.apply(v, packed, pool, method=clip_lib.CLIP.encode_text_packed)
    return jnp.sum(img ** 2) + jnp.sum(jnp.where((pool >= 0)[..., None], txt, 0.0) ** 2)
  return f


def _kept_bytes(f, *args):
  """Bytes the backward pass of `f` keeps from its forward pass (its VJP's residuals, inputs included)."""
  residuals = jax.eval_shape(lambda *a: jax.vjp(f, *a)[1], *args)
  return sum(int(np.prod(r.shape)) * r.dtype.itemsize for r in jax.tree.leaves(residuals))


@pytest.mark.parametrize("config", [RESNET, VIT], ids=["resnet", "vit"])
def test_remat_policies_keep_values_gradients_and_parameter_names(config):
  images, packed, pool = _inputs(config)
  variables = clip_lib.init_variables(config)
  args = (variables["params"], variables["batch_stats"])
  values, grads, kept = {}, {}, {}
  for policy in tt.REMAT_POLICIES:
    module = clip_lib.CLIP(config, remat_text=policy, remat_image=policy)
    init = jax.jit(module.init)(jax.random.PRNGKey(0), images, packed[:, :8])
    for a, b in zip(jax.tree.leaves(init["params"]), jax.tree.leaves(variables["params"])):
      np.testing.assert_array_equal(a, b)  # Same names, shapes and initial values under every policy.
    loss = _loss(module, images, packed, pool)
    values[policy], grads[policy] = jax.jit(jax.value_and_grad(loss))(*args)
    kept[policy] = _kept_bytes(loss, *args)
    np.testing.assert_allclose(values[policy], values["none"], rtol=1e-6)
    for g, w in zip(jax.tree.leaves(grads[policy]), jax.tree.leaves(grads["none"])):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # Blocks keep only their inputs, dots_saveable also the matmul outputs, none everything.
  assert kept["blocks"] < kept["dots_saveable"] < kept["none"], kept


def test_im2col_convolution_equals_xla():
  images = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
  out, grads = {}, {}
  for impl in ("xla", "matmul"):
    module = modified_resnet.ModifiedResNet((1, 1, 1, 1), 32, 2, 32, 16, conv_impl=impl)
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), images)
    f = lambda p, v=variables, m=module: jnp.sum(m.apply({**v, "params": p}, images) ** 2)
    out[impl], grads[impl] = jax.jit(jax.value_and_grad(f))(variables["params"])
    out[impl + "_init"] = variables["params"]
  for a, b in zip(jax.tree.leaves(out["xla_init"]), jax.tree.leaves(out["matmul_init"])):
    np.testing.assert_array_equal(a, b)  # nn.Conv's parameter, name and initial values.
  np.testing.assert_allclose(out["matmul"], out["xla"], rtol=1e-5)
  scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(grads["xla"]))
  for a, b in zip(jax.tree.leaves(grads["matmul"]), jax.tree.leaves(grads["xla"])):
    # Key biases have zero gradient in exact arithmetic, rounding noise here: absolute to the largest.
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("field, value, message", [
    ("model.remat_text", "layers", "config.model.remat_text='layers' is not one of: none, blocks, dots_saveable"),
    ("model.remat_image", "all", "config.model.remat_image='all' is not one of"),
    ("model.conv_impl", "cudnn", "config.model.conv_impl='cudnn' is not one of: auto, xla, matmul"),
    ("hgr.prompt_chunk_rows", -8, "hgr.prompt_chunk_rows=-8"),
])
def test_bad_values_name_the_field(field, value, message):
  config = hgr_rn50.get_config("demo")
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(UserError, match=message.replace("(", r"\(")):
    hgr_trainer.Trainer.check_config(config)
