"""Torch/numpy CLIP state dicts -> Flax variables, and reading the files that hold them.

Users bring OpenAI `.pt` files (TorchScript archives), open_clip checkpoints (`.pt`/`.bin` pickles,
possibly a training checkpoint with a `state_dict` entry, or `.safetensors`) and HGR-Net's
`clip_<epoch>` files (torch.save of `clip_model.state_dict()`, fp16 Conv/Linear weights, maybe a
`module.` prefix from DataParallel). All reduce to one torch-named dict of float32 numpy arrays,
which is mapped leaf by leaf onto the Flax tree with strict shape and key checks, so a file of
another architecture fails with one clear message instead of a half-loaded model.

torch is imported lazily, only for torch pickles/archives; `.safetensors` needs no torch. Files are
read with `weights_only=True` (`zsl_jax.models.torch_io`), so they cannot run code.
"""
import os

import jax
import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.models import torch_io
from zsl_jax.models.clip import model as clip_lib

# Buffers that are not CLIP parameters: BatchNorm counters, the int metadata OpenAI's TorchScript
# archives carry, and open_clip's causal mask (persistent in some versions).
_IGNORED_SUFFIXES = ("num_batches_tracked", "attn_mask")
_IGNORED_KEYS = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path):
  """Reads a checkpoint file into a {torch name: array or tensor} dict (`torch_io.read_torch_file`)."""
  if not os.path.isfile(os.fspath(path)):
    raise UserError(f"CLIP checkpoint {os.fspath(path)} does not exist; pass an OpenAI .pt, an open_clip .pt/.bin/"
                    ".safetensors, an HGR-Net clip_<epoch> file or a converted directory")
  return torch_io.read_torch_file(path, "CLIP checkpoint")


def _to_numpy(value):
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def normalize_state_dict(sd):
  """Unwraps training checkpoints, strips DataParallel prefixes, casts floats to float32 numpy."""
  if not isinstance(sd, dict):
    raise UserError(f"expected a CLIP state dict, got {type(sd).__name__}; pass the model's state_dict() or "
                    "a checkpoint file")
  for wrapper in ("state_dict", "model", "model_state_dict"):
    if wrapper in sd and isinstance(sd[wrapper], dict) and "text_projection" not in sd:
      sd = sd[wrapper]
  out = {}
  for key, value in sd.items():
    for prefix in _WRAPPER_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
    if key in _IGNORED_KEYS or key.endswith(_IGNORED_SUFFIXES):
      continue
    arr = _to_numpy(value)
    out[key] = arr.astype(np.float32) if np.issubdtype(arr.dtype, np.floating) else arr
  return out


def _torch_name(path):
  """Flax path (tuple of keys, collection first) -> torch state-dict name."""
  collection, *mods, leaf = path
  prefix = ".".join(mods)
  if mods and mods[-1] == "in_proj":
    return ".".join(mods[:-1]) + (".in_proj_weight" if leaf == "kernel" else ".in_proj_bias")
  if collection == "batch_stats":
    return f"{prefix}.running_{leaf}"
  if leaf in ("kernel", "scale", "embedding"):
    return f"{prefix}.weight"
  if leaf == "bias":
    return f"{prefix}.bias"
  return ".".join(mods + [leaf])


def _to_flax(arr, leaf):
  if leaf == "kernel" and arr.ndim == 4:  # torch [O, I, kh, kw] -> [kh, kw, I, O]
    return arr.transpose(2, 3, 1, 0)
  if leaf == "kernel" and arr.ndim == 2:  # torch Linear [O, I] -> [I, O]
    return arr.T
  return arr


def torch_to_flax(sd, config):
  """Maps a normalised torch-named dict onto the Flax variables of `config` (strict)."""
  abstract = clip_lib.abstract_variables(config)
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  used, missing, mismatched, leaves = set(), [], [], []
  for path, spec in flat:
    keys = tuple(k.key for k in path)
    name = _torch_name(keys)
    if name not in sd:
      missing.append(name)
      leaves.append(None)
      continue
    used.add(name)
    arr = np.array(_to_flax(sd[name], keys[-1]), dtype=np.float32, order="C")
    if arr.shape != spec.shape:
      mismatched.append(f"{name} {tuple(sd[name].shape)}")
    leaves.append(arr)
  unexpected = sorted(set(sd) - used)
  if missing or mismatched or unexpected:
    parts = []
    for label, items in (("missing", missing), ("wrong shape", mismatched), ("unexpected", unexpected)):
      if items:
        parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
    raise UserError(f"state dict does not match CLIP {clip_lib.preset_name(config) or config}: "
                    f"{'; '.join(parts)}. Only OpenAI-style CLIP (ModifiedResNet or ViT towers, QuickGELU "
                    "text transformer) can be loaded; other open_clip architectures are not supported")
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract), leaves)


def convert(source):
  """A path or state dict -> (CLIPConfig, {'params', 'batch_stats'} of numpy float32)."""
  sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
  sd = normalize_state_dict(sd)
  config = clip_lib.config_from_state_dict(sd)
  return config, torch_to_flax(sd, config)
