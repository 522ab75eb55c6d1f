"""optax optimizers from config, with per-parameter-group settings and freezing by regex.

One config describes every method's recipe: HGR-Net trains CLIP with AdamW at 3e-7 and its level
weights with SGD at 1e-4; DAZLE uses PyTorch's RMSprop. `optim.groups` is a tuple of
(regex, overrides) pairs matched against parameter paths ("visual/conv1/kernel"); the first match
wins, None freezes, unmatched parameters use the top-level settings.
"""
import copy
import re

import jax
import optax

from zsl_jax import sharding
from zsl_jax.errors import UserError

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "lamb")  # optim.name (and a group's "name")
SCHEDULES = ("constant", "cosine", "linear")  # optim.schedule.type (and a group's)

_GROUP_KEYS = ("name", "lr", "weight_decay", "wd_exclude", "b1", "b2", "eps", "momentum",
               "nesterov", "rms_decay", "grad_clip_norm", "accumulate_grads", "schedule")

# Parameters OpenAI's CLIP keeps in float16 (conv/linear/attention weights and biases, projections).
FP16_PRESETS = {"clip": r"(kernel|_proj/bias|c_fc/bias|text_projection|visual/proj)$"}


def accumulate_and_clip(max_norm):
  """Gradients that are never zeroed: buffer <- clip_by_global_norm(buffer + g) (a reference quirk).

  HGR-Net's released code never calls `zero_grad()` and clips the .grad buffers in place, so each
  step applies the clipped running sum of all gradients so far. Off by default; reproduces it.
  """
  def init_fn(params):
    return jax.tree.map(lambda p: jax.numpy.zeros_like(p), params)

  def update_fn(updates, state, params=None):
    del params
    summed = jax.tree.map(lambda b, g: b + g, state, updates)
    norm = optax.global_norm(summed)
    scale = jax.numpy.minimum(1.0, max_norm / jax.numpy.maximum(norm, 1e-30)) if max_norm > 0 else 1.0
    clipped = jax.tree.map(lambda x: x * scale, summed)
    return clipped, clipped

  return optax.GradientTransformation(init_fn, update_fn)


def round_through_fp16(regex):
  """Makes p + update land on float16 values for matching parameters (no fp32 master copy).

  The reference keeps CLIP's conv/linear weights in float16 and casts back after every step, so
  updates smaller than the float16 spacing vanish. Applied after the optimizer; off by default.
  """
  rx = re.compile(FP16_PRESETS.get(regex, regex))

  def update_fn(updates, state, params):
    def one(path, u, p):
      if not rx.search(sharding.path_str(path)):
        return u
      return (p + u).astype(jax.numpy.float16).astype(p.dtype) - p
    return jax.tree_util.tree_map_with_path(one, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_schedule(lr, schedule, total_steps):
  """Linear warmup, then constant / cosine / linear decay to lr * end_factor.

  Warmup follows open_clip / HGR-Net (`lr * (step + 1) / warmup`), so the first step already
  learns; the decay phase spans the remaining `total_steps - warmup` steps.
  """
  kind = schedule.get("type", "constant")
  warmup = int(schedule.get("warmup_steps", 0))
  end = float(schedule.get("end_factor", 0.0))
  decay_steps = max(int(total_steps) - warmup, 1)
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end)
  elif kind == "linear":
    main = optax.linear_schedule(lr, lr * end, decay_steps)
  else:
    raise UserError(f"optim schedule type {kind!r} is not one of: {', '.join(SCHEDULES)}")
  if warmup <= 0:
    return main
  warm = lambda step: lr * (step + 1) / warmup
  return optax.join_schedules([warm, main], [warmup])


def _wd_mask(exclude):
  if not exclude:
    return None
  rx = re.compile(exclude)
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: not rx.search(sharding.path_str(path)), params)


def _group_transform(g, total_steps):
  """One group's chain: [clip] -> optimizer with its schedule."""
  lr = make_schedule(float(g["lr"]), g["schedule"], total_steps)
  wd, mask = float(g["weight_decay"]), _wd_mask(g["wd_exclude"])
  momentum = float(g["momentum"]) or None
  name = g["name"]
  if name == "adamw":
    opt = optax.adamw(lr, b1=g["b1"], b2=g["b2"], eps=g["eps"], weight_decay=wd, mask=mask)
  elif name == "lamb":
    opt = optax.lamb(lr, b1=g["b1"], b2=g["b2"], eps=g["eps"], weight_decay=wd, mask=mask)
  elif name in ("adam", "sgd", "rmsprop"):
    # PyTorch semantics: weight decay is an L2 term added to the gradient before the update rule.
    if name == "adam":
      core = optax.adam(lr, b1=g["b1"], b2=g["b2"], eps=g["eps"])
    elif name == "sgd":
      core = optax.sgd(lr, momentum=momentum, nesterov=bool(g["nesterov"]))
    else:
      # torch.optim.RMSprop: v = a v + (1-a) g^2; buf = m buf + g / (sqrt(v) + eps); p -= lr buf.
      core = optax.rmsprop(lr, decay=g["rms_decay"], eps=g["eps"], eps_in_sqrt=False,
                           momentum=momentum, initial_scale=0.0)
    opt = optax.chain(optax.add_decayed_weights(wd, mask), core) if wd else core
  else:
    raise UserError(f"optim.name={name!r} is not one of: {', '.join(OPTIMIZERS)}")
  clip = float(g["grad_clip_norm"] or 0.0)
  if g.get("accumulate_grads"):
    return optax.chain(accumulate_and_clip(clip), opt), lr
  return (optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt), lr


def _group_settings(base, overrides):
  g = {k: copy.deepcopy(base[k]) for k in _GROUP_KEYS}
  for k, v in dict(overrides).items():
    if k not in _GROUP_KEYS:
      raise UserError(f"optim group setting {k!r} is unknown; valid: {', '.join(_GROUP_KEYS)}")
    if k == "schedule":
      g["schedule"] = {**dict(g["schedule"]), **dict(v)}
    else:
      g[k] = v
  return g


def make(optim_config, total_steps):
  """Returns (optax transform, {group name: lr schedule}) for `optim_config` (see config_lib)."""
  base = {k: optim_config[k] for k in _GROUP_KEYS}
  groups = list(optim_config.get("groups", ()) or ())
  transforms, schedules, matchers = {}, {}, []
  tx, schedules["default"] = _group_transform(base, total_steps)
  transforms["default"] = tx
  for i, item in enumerate(groups):
    if len(item) != 2:
      raise UserError(f"optim.groups[{i}] = {item!r}; each group is (regex, overrides or None)")
    regex, overrides = item
    label = f"group{i}"
    matchers.append((re.compile(regex), label))
    if overrides is None or overrides == "freeze":
      transforms[label] = optax.set_to_zero()
    else:
      transforms[label], schedules[label] = _group_transform(_group_settings(base, overrides), total_steps)
  fp16 = optim_config.get("fp16_round", "")
  finish = (lambda tx: optax.chain(tx, round_through_fp16(fp16))) if fp16 else (lambda tx: tx)
  if not matchers:
    return finish(transforms["default"]), schedules

  def labels(params):
    def one(path, _):
      name = sharding.path_str(path)
      return next((lb for rx, lb in matchers if rx.search(name)), "default")
    return jax.tree_util.tree_map_with_path(one, params)

  return finish(optax.multi_transform(transforms, labels)), schedules
