"""OpenAI CLIP in Flax Linen, loadable from OpenAI / open_clip / HGR-Net checkpoints.

HGR-Net fine-tunes all of CLIP (both towers and `logit_scale`), so the model here is a plain Linen
module whose parameter tree mirrors torch's state dict names (`visual/layer1/0/conv1/kernel` for
`visual.layer1.0.conv1.weight`): optimiser rules written as regexes over torch names carry over.
`load` gives an inference wrapper; converted checkpoints (Orbax + a JSON config) load without
torch, which is needed only to read `.pt`/`.bin` files (see `clip_convert`).
"""
import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax.data import transforms
from zsl_jax.errors import UserError
from zsl_jax.models.clip import packing
from zsl_jax.models.clip import text_transformer as tt
from zsl_jax.models.clip.modified_resnet import ModifiedResNet
from zsl_jax.models.clip.vit import VisionTransformer
from zsl_jax.text import tokenizer

_F32 = jnp.float32
CONFIG_FILE = "clip_config.json"
VARIABLES_DIR = "variables"


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """OpenAI's `CLIP.__init__` arguments; `vision_layers` a 4-tuple means ModifiedResNet, an int ViT."""
  embed_dim: int
  image_resolution: int
  vision_layers: tuple | int
  vision_width: int
  vision_patch_size: int | None
  context_length: int = 77
  vocab_size: int = 49408
  transformer_width: int = 512
  transformer_heads: int = 8
  transformer_layers: int = 12

  def __post_init__(self):
    if isinstance(self.vision_layers, list):
      object.__setattr__(self, "vision_layers", tuple(self.vision_layers))

  @property
  def is_vit(self):
    return not isinstance(self.vision_layers, tuple)

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text):
    return cls(**json.loads(text))


def _rn(embed, res, layers, width, text_width, text_heads):
  return CLIPConfig(embed, res, layers, width, None, 77, 49408, text_width, text_heads, 12)


def _vit(embed, res, layers, width, patch, text_width, text_heads):
  return CLIPConfig(embed, res, layers, width, patch, 77, 49408, text_width, text_heads, 12)


# The released OpenAI models (the CLIP paper's hyperparameter tables; OpenAI's model cards).
PRESETS = {
    "RN50": _rn(1024, 224, (3, 4, 6, 3), 64, 512, 8),
    "RN101": _rn(512, 224, (3, 4, 23, 3), 64, 512, 8),
    "RN50x4": _rn(640, 288, (4, 6, 10, 6), 80, 640, 10),
    "RN50x16": _rn(768, 384, (6, 8, 18, 8), 96, 768, 12),
    "RN50x64": _rn(1024, 448, (3, 15, 36, 10), 128, 1024, 16),
    "ViT-B/32": _vit(512, 224, 12, 768, 32, 512, 8),
    "ViT-B/16": _vit(512, 224, 12, 768, 16, 512, 8),
    "ViT-L/14": _vit(768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": _vit(768, 336, 24, 1024, 14, 768, 12),
}


def get_config(name):
  """A preset by OpenAI name ("RN50", "ViT-B/32", ...); open_clip spellings ("ViT-B-32") also work."""
  key = name.replace("-quickgelu", "")
  aliases = {n.replace("/", "-").replace("@336px", "-336"): n for n in PRESETS}
  key = aliases.get(key, key)
  if key not in PRESETS:
    raise UserError(f"unknown CLIP model {name!r}; choose one of {', '.join(PRESETS)}")
  return PRESETS[key]


def preset_name(config):
  """The preset name equal to `config`, or None for a custom configuration."""
  return next((n for n, c in PRESETS.items() if c == config), None)


def _count_blocks(sd, prefix):
  return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def config_from_state_dict(sd):
  """Infers the architecture from tensor shapes, as OpenAI's `build_model` does.

  `sd` maps torch names to arrays (any object with `.shape`), without a `module.` prefix.
  """
  try:
    if "visual.proj" in sd:
      width = sd["visual.conv1.weight"].shape[0]
      layers = sum(1 for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight"))
      patch = sd["visual.conv1.weight"].shape[-1]
      grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
      vision = dict(image_resolution=patch * grid, vision_layers=layers, vision_width=width,
                    vision_patch_size=patch)
    else:
      layers = tuple(_count_blocks(sd, f"visual.layer{b}.") for b in (1, 2, 3, 4))
      width = sd["visual.layer1.0.conv1.weight"].shape[0]
      out_grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
      vision = dict(image_resolution=out_grid * 32, vision_layers=layers, vision_width=width,
                    vision_patch_size=None)
    text_width = sd["ln_final.weight"].shape[0]
    return CLIPConfig(embed_dim=sd["text_projection"].shape[1], context_length=sd["positional_embedding"].shape[0],
                      vocab_size=sd["token_embedding.weight"].shape[0], transformer_width=text_width,
                      transformer_heads=text_width // 64,
                      transformer_layers=_count_blocks(sd, "transformer.resblocks."), **vision)
  except KeyError as e:
    raise UserError(f"not an OpenAI-style CLIP state dict (no tensor {e.args[0]!r}); supported are OpenAI "
                    "CLIP, open_clip CLIP (ModifiedResNet or plain ViT towers, e.g. RN50-quickgelu, "
                    "ViT-B-32-quickgelu) and HGR-Net clip_<epoch> files") from None


class CLIP(nn.Module):
  """CLIP image and text towers with a learnable `logit_scale` (stored as a log, like torch).

  Attributes:
    config: the architecture.
    dtype: compute dtype (bfloat16 for the fast path); parameters are always float32.
    bn_use_running_average: BatchNorm default in the ResNet tower. True (HGR-Net recipe, torch
      `eval()`) normalises with the frozen running statistics while scale/bias still train. False
      normalises with batch statistics and updates `batch_stats` (torch momentum 0.1) when that
      collection is mutable.
    remat_text, remat_image: what each tower's blocks keep for the backward pass (`tt.REMAT_POLICIES`);
      memory for recomputation, numerics unchanged.
    conv_impl: the ResNet tower's convolutions (`modified_resnet.CONV_IMPLS`).
  """
  config: CLIPConfig
  dtype: jnp.dtype = jnp.float32
  bn_use_running_average: bool = True
  remat_text: str = "none"
  remat_image: str = "none"
  conv_impl: str = "auto"

  def setup(self):
    c = self.config
    if c.is_vit:
      self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
                                      c.vision_width // 64, c.embed_dim, self.dtype, self.remat_image)
    else:
      self.visual = ModifiedResNet(c.vision_layers, c.embed_dim, c.vision_width * 32 // 64, c.image_resolution,
                                   c.vision_width, self.dtype, self.conv_impl, self.remat_image)
    w = c.transformer_width
    self.token_embedding = nn.Embed(c.vocab_size, w, embedding_init=nn.initializers.normal(0.02),
                                    dtype=self.dtype, param_dtype=_F32)
    self.positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                           (c.context_length, w), _F32)
    self.transformer = tt.Transformer(w, c.transformer_layers, c.transformer_heads, self.dtype, self.remat_text)
    self.ln_final = tt.layer_norm(None)
    self.text_projection = self.param("text_projection", nn.initializers.normal(w ** -0.5), (w, c.embed_dim),
                                      _F32)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(np.log(1 / 0.07)), (), _F32)

  def encode_image(self, images, train=None):
    """images [N, R, R, 3] NHWC -> unnormalised features [N, E] float32.

    uint8 images (what the loaders send: a quarter of float32's bytes) are CLIP-normalised here, on
    device; float images must already be CLIP-normalised. `train=None` follows
    `bn_use_running_average`; `train=False` forces running statistics (eval); `train=True` uses
    batch statistics only if `bn_use_running_average` is False.
    """
    if images.dtype == jnp.uint8:
      images = transforms.normalize_on_device(images)
    if self.config.is_vit:
      return self.visual(images).astype(_F32)
    use_running_average = self.bn_use_running_average or train is False
    return self.visual(images, use_running_average).astype(_F32)

  def encode_text(self, tokens):
    """tokens [N, L] int32 with L <= context_length -> unnormalised features [N, E] float32.

    The transformer is causal and pools at the end-of-text token (the largest id), so the output
    does not depend on positions after it: callers may drop trailing padding (`truncate_tokens`).
    """
    n, seq_len = tokens.shape
    x = self.token_embedding(tokens) + self.positional_embedding[:seq_len].astype(self.dtype)  # [N, L, W]
    x = self.transformer(x, tt.causal_mask(seq_len))
    x = tt.ln_apply(self.ln_final, x)
    eot = jnp.argmax(tokens, axis=-1)  # [N]
    x = x[jnp.arange(n), eot]  # [N, W]
    return (x @ self.text_projection.astype(self.dtype)).astype(_F32)

  def encode_text_packed(self, tokens, pool):
    """Prompts packed end to end (`packing.pack`) -> unnormalised features [R, S, E] float32.

    tokens [R, T] int32 (T <= context_length): each prompt starts with SOT; zeros pad a row's end.
    pool [R, S] int32: the position of each slot's EOT in its row (-1: an empty slot, whose output
    is meaningless). Attention stays inside each prompt (same segment, causal) and positions restart
    at its SOT, so a prompt's feature is the one `encode_text` gives it alone.
    """
    return self.encode_embedded_packed(self.embed_packed(tokens), tokens, pool)

  def embed_packed(self, tokens):
    """Token + positional embeddings [R, T, W] of packed rows [R, T] (positions restart at each SOT)."""
    _, position = packing.segments_and_positions(tokens)
    return self.token_embedding(tokens) + self.positional_embedding[position].astype(self.dtype)

  def encode_embedded_packed(self, x, tokens, pool):
    """`encode_text_packed` after `embed_packed`: x [R, T, W] -> features [R, S, E]. Apart so that a
    chunked caller embeds every row at once: the embedding table's gradient is then one scatter."""
    segment, _ = packing.segments_and_positions(tokens)                      # [R, T]
    mask = (segment[:, :, None] == segment[:, None, :]) & tt.causal_mask(tokens.shape[1])  # [R, T, T]
    x = self.transformer(x, mask[:, None])
    x = tt.ln_apply(self.ln_final, x)
    x = jnp.take_along_axis(x, jnp.maximum(pool, 0)[..., None], axis=1)    # [R, S, W]
    return (x @ self.text_projection.astype(self.dtype)).astype(_F32)

  def __call__(self, images, tokens, train=None):
    """Returns (logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img]) as OpenAI's CLIP."""
    img = self.encode_image(images, train)
    txt = self.encode_text(tokens)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    logits = jnp.exp(self.logit_scale) * img @ txt.T
    return logits, logits.T


def init_variables(config, rng=None, dtype=jnp.float32):
  """Randomly initialised {'params', 'batch_stats'} for `config` (small images/text for speed)."""
  module = CLIP(config, dtype)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  images = jnp.zeros((1, config.image_resolution, config.image_resolution, 3), _F32)
  tokens = jnp.zeros((1, config.context_length), jnp.int32)
  variables = jax.jit(module.init)(rng, images, tokens)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


@functools.lru_cache(maxsize=16)
def abstract_variables(config, dtype=jnp.float32):
  """Shapes/dtypes of the variables without allocating them (`jax.eval_shape`; cached: tracing
  a real-size model takes seconds and conversions ask for it repeatedly)."""
  return jax.eval_shape(lambda: init_variables(config, dtype=dtype))


def count_params(config):
  """Number of trainable parameters (BatchNorm running statistics excluded, as in torch)."""
  shapes = abstract_variables(config)["params"]
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(shapes)))


def encode_prompts_in_chunks(encode, tokens, chunk):
  """[N, E] outputs of jitted `encode(tokens [chunk, L])` for all N prompts [N, L].

  Chunks are EOT-truncated and the last one is padded with copies of its first prompt, so a
  single compiled shape serves every call; the padding rows are dropped.
  """
  out = []
  for i in range(0, len(tokens), chunk):
    part = tokens[i:i + chunk]
    padded = np.concatenate([part, np.repeat(part[:1], chunk - len(part), 0)])
    out.append(encode(jnp.asarray(tokenizer.truncate_tokens(padded)))[:len(part)])
  return jnp.concatenate(out)
