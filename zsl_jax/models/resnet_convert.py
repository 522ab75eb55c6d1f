"""torchvision ResNet state dict -> Flax variables of `zsl_jax.models.resnet.ResNet`.

The only place torch is needed is reading a `.pth` file (`torch_io.read_torch_file`, weights only),
so the model and the conversion of already-numpy state dicts stay torch-free. Stage sizes are
inferred from the keys, so any torchvision Bottleneck ResNet (50/101/152 or a custom depth) converts.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.models import torch_io


def _to_numpy(t):
  if hasattr(t, "detach"):
    t = t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
  return np.asarray(t)


def _strip_prefixes(state):
  """Unwraps {'state_dict': ...}/{'model': ...} and 'module.' (DataParallel) prefixes."""
  for key in ("state_dict", "model", "model_state_dict"):
    if isinstance(state.get(key), dict):
      state = state[key]
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def stage_sizes_from_state_dict(state):
  """(blocks per stage) from keys like `layer3.22.conv1.weight`."""
  sizes = [0, 0, 0, 0]
  for key in state:
    m = re.match(r"layer([1-4])\.(\d+)\.", key)
    if m:
      sizes[int(m.group(1)) - 1] = max(sizes[int(m.group(1)) - 1], int(m.group(2)) + 1)
  if not all(sizes) or not any(k.endswith("conv3.weight") for k in state):
    raise UserError("the checkpoint is not a torchvision Bottleneck ResNet (no layer1..layer4 conv3 weights); "
                    "pass a torchvision resnet50/resnet101 .pth state dict")
  return tuple(sizes)


def _put(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def torchvision_to_flax(state, include_fc=False):
  """Converts a torchvision ResNet state dict (tensors or arrays) to {'params', 'batch_stats'}.

  Conv weights [O, I, kh, kw] -> kernels [kh, kw, I, O]; BN weight/bias/running_mean/var ->
  scale/bias (params) and mean/var (batch_stats); fc weight [O, I] -> kernel [I, O].
  """
  state = _strip_prefixes(dict(state))
  params, stats = {}, {}
  used = set()
  for key, value in state.items():
    if key.endswith("num_batches_tracked"):
      used.add(key)
      continue
    parts = key.split(".")
    if parts[0] == "fc" and not include_fc:
      used.add(key)
      continue
    # layer1.0.downsample.0.weight -> ('layer1_0', 'downsample', '0', 'weight')
    if re.fullmatch(r"layer[1-4]", parts[0]):
      parts = [f"{parts[0]}_{parts[1]}"] + parts[2:]
    *module, leaf = parts
    arr = _to_numpy(value)
    is_bn = module[-1].startswith("bn") or (len(module) >= 2 and module[-2] == "downsample" and module[-1] == "1")
    if module[-1] == "fc":
      _put(params, module + ["kernel" if leaf == "weight" else "bias"], arr.T if leaf == "weight" else arr)
    elif is_bn:
      target, name = {"weight": (params, "scale"), "bias": (params, "bias"), "running_mean": (stats, "mean"),
                      "running_var": (stats, "var")}[leaf]
      _put(target, module + [name], arr.astype(np.float32))
    elif leaf == "weight" and arr.ndim == 4:
      _put(params, module + ["kernel"], arr.transpose(2, 3, 1, 0).astype(np.float32))
    else:
      raise UserError(f"unexpected checkpoint entry {key!r} {arr.shape}; the checkpoint is not a torchvision ResNet")
    used.add(key)
  return {"params": params, "batch_stats": stats}


def check_variables(model, variables, image_size=224):
  """Raises UserError if `variables` do not match `model`'s parameter tree (names and shapes)."""
  want = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)))
  want_flat = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(want)}
  got_flat = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(variables)}
  missing = sorted(set(want_flat) - set(got_flat))
  extra = sorted(set(got_flat) - set(want_flat))
  wrong = sorted(k for k in set(want_flat) & set(got_flat) if tuple(want_flat[k]) != tuple(got_flat[k]))
  if missing or extra or wrong:
    raise UserError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}, "
                    f"wrong shapes {wrong[:3]}; pass a torchvision ResNet state dict of the same depth")


def load_torchvision_checkpoint(path):
  """Reads a torchvision `.pth` (state dict) and returns (stage_sizes, flax variables)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"weights file {path} not found; pass a torchvision ResNet-101 checkpoint "
                    f"(e.g. resnet101-63fe2227.pth)")
  state = torch_io.read_torch_file(path, "ResNet weights file")
  if not isinstance(state, dict):
    raise UserError(f"{path} holds a {type(state).__name__}, not a state dict; save model.state_dict()")
  state = _strip_prefixes(state)
  return stage_sizes_from_state_dict(state), torchvision_to_flax(state)
