"""Shared config pieces: the fields every trainer's config has, and `parse_arg`.

Config files (`configs/*.py`) define `get_config(arg=None)`: they start from `base_config()` and
set what their method needs. `arg` is a comma-separated list parsed by `parse_arg`, e.g.
`--config=configs/hgr_rn50.py:demo` or `:variant=RN101,demo`.

`check_choice` is how a switch (a field documented as `a | b | c`) is validated: trainers call it
from their `check_config`, before anything is written or traced, with the tuple of values the
implementing module defines, so a typo ends with one line naming the field and its values.
"""
import ml_collections

from zsl_jax.errors import UserError

_ABSENT = object()
MODES = ("train", "eval")  # config.mode: zsl_jax.engine.run's two loops


_TRUE, _FALSE = ("1", "true", "yes", "y"), ("0", "false", "no", "n")


def _arg_value(key, value, default, arg):
  """`value` (text after `key=`) as the type of `default`; UserError naming the argument when it is not one."""
  kind = type(default)
  try:
    if kind is bool:
      if value.lower() not in _TRUE + _FALSE:
        raise ValueError(value)
      return value.lower() in _TRUE
    return kind(value) if kind in (int, float) else value
  except ValueError:
    example = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "text")
    raise UserError(f"config argument {key}={value!r} in {arg!r} is not {example}; e.g. {key}={default}") from None


def parse_arg(arg, **defaults):
  """Parses "demo,variant=RN101" into a ConfigDict over `defaults` (bare words set True).

  Unknown names and values of the wrong type are errors, so a misspelled variant fails instead of being ignored.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return result
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, value = item.partition("=")
    if key not in defaults:
      raise UserError(f"unknown config argument {key!r} in {arg!r}; valid arguments: {sorted(defaults)}")
    if not has_value and not isinstance(defaults[key], bool):
      raise UserError(f"config argument {key!r} in {arg!r} needs a value, e.g. {key}={defaults[key]}")
    result[key] = _arg_value(key, value, defaults[key], arg) if has_value else True
  return result


def lookup(config, field, default=None):
  """config's value at the dotted `field` ("hgr.weighting"), or `default` where the config has no such field."""
  node = config
  for part in field.split("."):
    if not hasattr(node, "get"):
      return default
    node = node.get(part, _ABSENT)
    if node is _ABSENT:
      return default
  return node


def check_value(field, value, choices, normalize=None):
  """UserError unless `value` (after `normalize`, e.g. str.upper) is one of `choices`."""
  if (normalize(value) if normalize else value) not in choices:
    any_case = " (any case)" if normalize is str.upper else ""
    raise UserError(f"config.{field}={value!r} is not one of: {', '.join(map(str, choices))}{any_case}")


def check_choice(config, field, choices, normalize=None):
  """`check_value` of config's dotted `field`; a config without that field passes (its default applies)."""
  value = lookup(config, field, _ABSENT)
  if value is not _ABSENT:
    check_value(field, value, choices, normalize)


def check_choices(config, table):
  """`check_choice` of every {dotted field: choices} of `table`."""
  for field, choices in table.items():
    check_choice(config, field, choices)


def optim_config(**overrides):
  """Optimizer fields read by `zsl_jax.optim.make` (one group; `groups` adds per-regex overrides)."""
  c = ml_collections.ConfigDict(dict(
      name="adamw",            # adamw | adam | sgd | rmsprop (PyTorch semantics) | lamb
      lr=1e-3,
      weight_decay=0.0,        # decoupled for adamw/lamb, coupled L2 (as PyTorch) for sgd/rmsprop
      wd_exclude="",           # regex of parameter paths without weight decay ("" = decay all)
      b1=0.9, b2=0.999, eps=1e-8,
      momentum=0.0, nesterov=False,
      rms_decay=0.99,          # PyTorch RMSprop's alpha
      grad_clip_norm=0.0,      # global norm over the group's gradients; 0 disables
      accumulate_grads=False,  # reference quirk: never zero grads, clip the running sum (HGR-Net)
      fp16_round="",           # reference quirk: regex (or "clip") of params kept in float16
      schedule=ml_collections.ConfigDict(dict(
          type="constant",     # constant | cosine | linear
          warmup_steps=0,
          end_factor=0.0,      # final lr = lr * end_factor for cosine/linear
      )),
      # ((regex, overrides-dict | None), ...): first match wins; None freezes the parameters.
      groups=(),
  ))
  c.update(overrides)
  return c


def base_config():
  """Fields the engine reads; trainers add their own sub-dicts (`data`, `model`, ...)."""
  c = ml_collections.ConfigDict()
  c.trainer = ""             # a short name from zsl_jax/projects/__init__.py, or a dotted module path
  c.mode = "train"           # train | eval (MODES)
  c.seed = 0
  c.total_steps = 0          # > 0 wins over num_epochs
  c.num_epochs = 0.0         # converted with the trainer's steps_per_epoch
  c.batch_size = 32          # global, over all hosts
  c.compute_dtype = "auto"   # auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.sharding = ml_collections.ConfigDict(dict(
      strategy="replicate",  # replicate | fsdp (shard big parameters over the fsdp axis)
      min_fsdp_size=2 ** 18,  # parameters with fewer elements stay replicated
      rules=(),              # ((regex, "replicate" | "fsdp"), ...) evaluated before the strategy
  ))
  c.optim = optim_config()
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  c.init = ml_collections.ConfigDict(dict(
      checkpoint="",         # a zsl_jax workdir / checkpoint step dir, or a trainer-specific file
      step=-1,               # -1: latest
  ))
  c.log = ml_collections.ConfigDict(dict(every_steps=50, tensorboard=True, progress=True))
  c.evals = ml_collections.ConfigDict()  # name -> {type, every_steps (0 = only at the end), ...}
  c.compilation_cache_dir = "~/.cache/zsl_jax/xla"  # "" disables the persistent cache
  c.distributed = ml_collections.ConfigDict(dict(
      initialize=False,      # jax.distributed.initialize(); auto-detects SLURM / TPU pods
      coordinator_address="", num_processes=0, process_id=-1,
      initialization_timeout=300,
      heartbeat_timeout_seconds=60))  # a dead peer ends the others within ~1-2 minutes
  return c
