"""Flax CLIP behaviour that needs no torch: tree names, BatchNorm modes, truncation, bf16, the
zero-shot classifier and its cache, converted-checkpoint save/load. Tiny custom CLIP (the HGR-Net
demo size) keeps it fast."""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax.errors import UserError
from zsl_jax.models import clip as clip_lib
from zsl_jax.models.clip import zero_shot
from zsl_jax.text import templates
from zsl_jax.text import tokenize
from zsl_jax.text import truncate_tokens

TINY_RN = clip_lib.CLIPConfig(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                              vision_patch_size=None, transformer_width=64, transformer_heads=1,
                              transformer_layers=2)
TINY_VIT = clip_lib.CLIPConfig(embed_dim=64, image_resolution=64, vision_layers=2, vision_width=64,
                               vision_patch_size=16, transformer_width=64, transformer_heads=1,
                               transformer_layers=2)
CLASSES = ["tench", "goldfish", "great white shark", "tiger shark, Galeocerdo cuvieri", "hammerhead"]


def _random_variables(config, seed=0):
  """Random variables from the abstract shapes (numpy; avoids compiling `init` for every test).

  BatchNorm gets random affine parameters and statistics so its code paths matter.
  """
  rng = np.random.RandomState(seed)
  def f(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['logit_scale']"):
      return jnp.asarray(np.log(1 / 0.07), jnp.float32)
    if name.endswith("['var']"):
      v = rng.rand(*x.shape) + 0.5
    elif name.endswith("['embedding']"):
      v = rng.randn(*x.shape) * 0.02
    elif x.ndim >= 2:
      v = rng.randn(*x.shape) / np.sqrt(np.prod(x.shape[:-1]))
    elif name.endswith("['scale']"):
      v = 1 + 0.2 * rng.randn(*x.shape)
    else:
      v = 0.1 * rng.randn(*x.shape)
    return jnp.asarray(v, jnp.float32)
  return jax.tree_util.tree_map_with_path(f, clip_lib.abstract_variables(config))


@pytest.fixture(scope="module")
def tiny():
  config = TINY_RN
  variables = _random_variables(config)
  return clip_lib.LoadedCLIP(config, variables)


@pytest.fixture(scope="module")
def images():
  return np.random.RandomState(0).randn(4, 64, 64, 3).astype(np.float32)


def test_tree_follows_torch_names(tiny):
  flat = flax.traverse_util.flatten_dict(tiny.variables, sep=".")
  for key in ("params.visual.conv1.kernel", "params.visual.bn1.scale", "batch_stats.visual.bn1.var",
              "params.visual.layer1.0.downsample.0.kernel", "batch_stats.visual.layer2.0.downsample.1.mean",
              "params.visual.attnpool.positional_embedding", "params.visual.attnpool.c_proj.kernel",
              "params.transformer.resblocks.1.attn.in_proj.kernel", "params.transformer.resblocks.0.mlp.c_fc.bias",
              "params.token_embedding.embedding", "params.ln_final.scale", "params.text_projection",
              "params.logit_scale", "params.positional_embedding"):
    assert key in flat, key
  assert set(tiny.variables["params"]) == {"visual", "transformer", "token_embedding", "positional_embedding",
                                           "ln_final", "text_projection", "logit_scale"}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tiny.variables))
  vit = clip_lib.abstract_variables(TINY_VIT)
  assert set(vit["params"]["visual"]) == {"conv1", "class_embedding", "positional_embedding", "ln_pre",
                                          "transformer", "ln_post", "proj"}
  assert not vit["batch_stats"]


def test_batchnorm_frozen_by_default_but_affine_trains(tiny, images):
  module = clip_lib.CLIP(tiny.config)
  params, stats = tiny.variables["params"], tiny.variables["batch_stats"]
  out, updates = jax.jit(functools.partial(module.apply, method=clip_lib.CLIP.encode_image, mutable=["batch_stats"]))(
      {"params": params, "batch_stats": stats}, images)
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], stats)
  np.testing.assert_allclose(out, tiny.encode_image(images), rtol=1e-6, atol=1e-6)

  def loss(p):
    feats = module.apply({"params": p, "batch_stats": stats}, images, method=clip_lib.CLIP.encode_image)
    return jnp.sum(feats ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  assert np.abs(grads["visual"]["bn1"]["scale"]).max() > 0
  assert np.abs(grads["visual"]["layer1"]["0"]["bn3"]["bias"]).max() > 0


def test_batchnorm_update_option(tiny, images):
  module = clip_lib.CLIP(tiny.config, bn_use_running_average=False)
  v = tiny.variables
  train_out, updates = jax.jit(functools.partial(module.apply, method=clip_lib.CLIP.encode_image,
                                                 mutable=["batch_stats"]))(v, images)
  old, new = v["batch_stats"]["visual"]["bn1"], updates["batch_stats"]["visual"]["bn1"]
  # Running mean moves 10% towards the batch mean (torch momentum 0.1).
  x = np.asarray(jax.lax.conv_general_dilated(images, v["params"]["visual"]["conv1"]["kernel"], (2, 2),
                                              ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  n = x.size // x.shape[-1]
  np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * x.var(axis=(0, 1, 2)) * n / (n - 1),
                             rtol=1e-4, atol=1e-5)
  eval_out = jax.jit(functools.partial(module.apply, method=clip_lib.CLIP.encode_image, train=False))(v, images)
  np.testing.assert_allclose(eval_out, tiny.encode_image(images), rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(train_out) - np.asarray(eval_out)).max() > 1e-3


def test_truncated_text_equals_full_length(tiny):
  tokens = tokenize(["a photo of a tench.", "itap of a great white shark in a video game.", "x", ""])
  full = np.asarray(tiny.encode_text(tokens, truncate=False))
  short = truncate_tokens(tokens)
  assert short.shape[1] == 16
  cut = np.asarray(tiny.encode_text(short, truncate=False))
  rel = np.linalg.norm(cut - full, axis=1) / np.linalg.norm(full, axis=1)
  assert rel.max() < 1e-6


def test_bf16_path_tracks_fp32(tiny, images):
  fast = clip_lib.LoadedCLIP(tiny.config, tiny.variables, dtype=jnp.bfloat16)
  tokens = tokenize(CLASSES)
  for a, b in ((fast.encode_image(images), tiny.encode_image(images)),
               (fast.encode_text(tokens), tiny.encode_text(tokens))):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
    assert np.abs(a - b).max() > 0  # really ran in bf16
  module = clip_lib.CLIP(tiny.config, dtype=jnp.bfloat16)
  jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, method=clip_lib.CLIP.encode_image))(tiny.variables, images)
  assert "bf16" in str(jaxpr)


def test_vit_tower_and_call(images):
  variables = clip_lib.init_variables(TINY_VIT, jax.random.PRNGKey(1))  # the from-scratch path
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  np.testing.assert_allclose(variables["params"]["logit_scale"], np.log(1 / 0.07), rtol=1e-6)
  module = clip_lib.CLIP(TINY_VIT)
  tokens = tokenize(CLASSES)[:, :16]
  @jax.jit
  def run(v):
    return (module.apply(v, images, tokens), module.apply(v, images, method=clip_lib.CLIP.encode_image),
            module.apply(v, tokens, method=clip_lib.CLIP.encode_text))
  (logits_img, logits_txt), img, txt = run(variables)
  assert logits_img.shape == (4, 5) and logits_txt.shape == (5, 4)
  img, txt = img / jnp.linalg.norm(img, axis=-1, keepdims=True), txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
  np.testing.assert_allclose(logits_img, (1 / 0.07) * img @ txt.T, rtol=1e-4, atol=1e-4)


def test_zero_shot_classifier_and_cache(tiny, tmp_path):
  temps = templates.OPENAI_IMAGENET_TEMPLATES[:7]
  got = zero_shot.build_classifier(tiny, CLASSES, temps, batch_size=8, cache_dir=str(tmp_path))
  assert got.shape == (5, 64) and got.dtype == np.float32
  # Reference: per class, full-length tokens, normalise, mean, normalise (open_clip's recipe).
  want = []
  for name in CLASSES:
    feats = np.array(tiny.encode_text(tokenize([t.format(name) for t in temps]), truncate=False))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    mean = feats.mean(0)
    want.append(mean / np.linalg.norm(mean))
  np.testing.assert_allclose(got, np.stack(want), atol=1e-6)
  files = list(tmp_path.glob("zeroshot_*.npy"))
  assert len(files) == 1
  np.save(files[0], got * 0 + 7)  # a cache hit must return the file's content
  np.testing.assert_array_equal(zero_shot.build_classifier(tiny, CLASSES, temps, cache_dir=str(tmp_path)), 7)
  zero_shot.build_classifier(tiny, CLASSES, temps[:3], batch_size=8, cache_dir=str(tmp_path))
  other = clip_lib.LoadedCLIP(tiny.config, _random_variables(tiny.config, seed=2))
  assert other.fingerprint != tiny.fingerprint
  zero_shot.build_classifier(other, CLASSES, temps[:3], batch_size=8, cache_dir=str(tmp_path))
  assert len(list(tmp_path.glob("zeroshot_*.npy"))) == 3


def test_converted_checkpoint_round_trip(tiny, tmp_path, images):
  clip_lib.save_converted(str(tmp_path / "ckpt"), tiny.config, tiny.variables)
  loaded = clip_lib.load(str(tmp_path / "ckpt"))
  assert loaded.config == tiny.config
  jax.tree.map(np.testing.assert_array_equal, loaded.variables, tiny.variables)
  assert loaded.fingerprint == tiny.fingerprint
  with pytest.raises(UserError, match="convert_clip"):
    clip_lib.load(str(tmp_path))


def test_presets_and_config_errors():
  assert clip_lib.get_config("ViT-B-32-quickgelu") == clip_lib.get_config("ViT-B/32")
  assert clip_lib.get_config("ViT-L-14-336") == clip_lib.PRESETS["ViT-L/14@336px"]
  assert clip_lib.preset_name(clip_lib.get_config("RN50x4")) == "RN50x4"
  assert clip_lib.CLIPConfig.from_json(TINY_RN.to_json()) == TINY_RN
  with pytest.raises(UserError, match="unknown CLIP model"):
    clip_lib.get_config("RN18")
  with pytest.raises(UserError, match="not an OpenAI-style CLIP"):
    clip_lib.load({"fc.weight": np.zeros((10, 4), np.float32)})
  with pytest.raises(UserError, match="does not exist"):
    clip_lib.load("/nonexistent/clip.pt")
  assert clip_lib.count_params(clip_lib.get_config("RN50")) == 102_007_137  # open_clip's RN50 count
