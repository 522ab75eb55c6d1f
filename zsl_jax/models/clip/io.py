"""Converted CLIP folders and torch files -> a ready `LoadedCLIP` (inference encoders).

Kept apart from the architecture (`model.py`) and the torch-name mapping (`convert.py`) so that
neither imports the other through this module: io sits on top of both.
"""
import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from zsl_jax.errors import UserError
from zsl_jax.models.clip import convert as clip_convert
from zsl_jax.models.clip.model import abstract_variables
from zsl_jax.models.clip.model import CLIP
from zsl_jax.models.clip.model import CLIPConfig
from zsl_jax.models.clip.model import CONFIG_FILE
from zsl_jax.models.clip.model import VARIABLES_DIR
from zsl_jax.text.tokenizer import truncate_tokens

_F32 = jnp.float32


def save_converted(out_dir, config, variables):
  """Writes `<out_dir>/clip_config.json` and an Orbax checkpoint `<out_dir>/variables`."""
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.join(out_dir, VARIABLES_DIR), jax.tree.map(jnp.asarray, variables), force=True)
  ckpt.wait_until_finished()
  with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(config.to_json())


def load_converted(ckpt_dir):
  """Reads a directory written by `save_converted` (no torch) -> (config, variables)."""
  ckpt_dir = os.path.abspath(ckpt_dir)
  try:
    with open(os.path.join(ckpt_dir, CONFIG_FILE), encoding="utf-8") as f:
      config = CLIPConfig.from_json(f.read())
  except (OSError, json.JSONDecodeError, TypeError) as e:
    raise UserError(f"{ckpt_dir} has no readable {CONFIG_FILE} ({e}); convert the checkpoint with "
                    "`python -m zsl_jax.tools.convert_clip IN OUT`") from None
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          abstract_variables(config))
  try:
    variables = ocp.StandardCheckpointer().restore(os.path.join(ckpt_dir, VARIABLES_DIR), abstract)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"could not restore the CLIP variables in {ckpt_dir} ({type(e).__name__}: "
                    f"{str(e)[:200]}); re-run `python -m zsl_jax.tools.convert_clip`") from None
  return config, variables


class LoadedCLIP:
  """A CLIP model with its variables and jitted encoders (inference).

  `encode_text` drops token columns after the batch's last end-of-text token (bucketed to a
  multiple of 8), which changes no output since the text tower is causal and pools at EOT.
  """

  def __init__(self, config, variables, dtype=jnp.float32):
    self.config = config
    self.module = CLIP(config, dtype)
    self.variables = variables
    self._image_fn = jax.jit(functools.partial(self.module.apply, method=CLIP.encode_image, train=False))
    self._text_fn = jax.jit(functools.partial(self.module.apply, method=CLIP.encode_text))
    self._fingerprint = None

  def encode_image(self, images):
    """images [N, R, R, 3] float32 NHWC (CLIP-normalised) -> [N, E] float32, unnormalised."""
    return self._image_fn(self.variables, jnp.asarray(images, _F32))

  def encode_text(self, token_ids, truncate=True):
    """token_ids [N, L] int -> [N, E] float32, unnormalised."""
    tokens = np.asarray(token_ids).astype(np.int32)
    if truncate:
      tokens = truncate_tokens(tokens)
    return self._text_fn(self.variables, tokens)

  @property
  def fingerprint(self):
    """SHA-256 over config and all variable bytes: a cache key for derived artefacts."""
    if self._fingerprint is None:
      h = hashlib.sha256(self.config.to_json().encode())
      for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(self.variables)[0], key=lambda t: str(t[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
      self._fingerprint = h.hexdigest()
    return self._fingerprint


def load(path_or_state_dict, dtype=jnp.float32):
  """A `LoadedCLIP` from a converted directory (no torch), a checkpoint file or a state dict.

  Files may be OpenAI `.pt` (TorchScript), open_clip `.pt`/`.bin`/`.safetensors` or HGR-Net
  `clip_<epoch>` state dicts; torch is imported only for torch files.
  """
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    path = os.fspath(path_or_state_dict)
    if os.path.isdir(path):
      config, variables = load_converted(path)
      return LoadedCLIP(config, variables, dtype)
  config, variables = clip_convert.convert(path_or_state_dict)
  return LoadedCLIP(config, jax.tree.map(jnp.asarray, variables), dtype)
