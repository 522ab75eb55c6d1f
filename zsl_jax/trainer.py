"""Base class of every method's Trainer (the contract is `zsl_jax.contracts.Trainer`).

The module `config.trainer` names (e.g. `zsl_jax.projects.hgr.trainer`) exposes `Trainer(config, mesh)`; the engine owns
everything else (sharding, optimizer, jit, checkpoints, metrics, evaluators). The trainer only
says how to build variables, how a batch becomes a loss, and where the batches come from.
`Trainer.check_config` validates every config switch before anything is written or traced: the
engine's here (`check_engine_config`), each method's in its subclass.
"""
import jax
import jax.numpy as jnp

from zsl_jax import config_lib
from zsl_jax import optim
from zsl_jax import sharding
from zsl_jax.errors import UserError

COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
# Counts checked wherever a config has them (any depth, e.g. evals.<name>.batch_size): field -> (minimum, meaning).
COUNTS = {
    "batch_size": (1, "examples per batch"),
    "prompt_batch": (1, "prompts per text-tower call"),
    "total_steps": (0, "0 = use num_epochs"),
    "num_epochs": (0, "0 = use total_steps"),
    "every_steps": (0, "0 = off, or only at the end for evaluators"),
    "keep": (0, "0 = keep every checkpoint"),
    "warmup_steps": (0, "steps of linear warm-up"),
}


def compute_dtype(config):
  """bfloat16 on GPU/TPU and float32 on CPU for "auto"; parameters always stay float32."""
  name = config.get("compute_dtype", "auto")
  if name == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  config_lib.check_value("compute_dtype", name, COMPUTE_DTYPES)
  return jnp.dtype(name)


def _numbers(node, prefix=""):
  """(dotted field, value) of every int/float leaf of a config (bools excluded)."""
  for key, value in node.items():
    if hasattr(value, "items"):
      yield from _numbers(value, f"{prefix}{key}.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield f"{prefix}{key}", value


def check_counts(config):
  """Batch sizes > 0 and lengths / intervals >= 0 (a negative total_steps would silently train the default)."""
  for field, value in _numbers(config):
    rule = COUNTS.get(field.rsplit(".", 1)[-1])
    if rule is not None and not value >= rule[0]:  # `not >=` also catches NaN
      raise UserError(f"config.{field}={value!r} must be >= {rule[0]} ({rule[1]}); set "
                      f"--config.{field}=<a number >= {rule[0]}>")


def check_engine_config(config):
  """The switches the engine reads: mode, compute_dtype, sharding, the counts and the optimizer of every group."""
  check_counts(config)
  config_lib.check_choices(config, {"mode": config_lib.MODES, "compute_dtype": COMPUTE_DTYPES,
                                    "sharding.strategy": sharding.STRATEGIES})
  for i, rule in enumerate(config_lib.lookup(config, "sharding.rules", ()) or ()):
    if len(rule) != 2:
      raise UserError(f"config.sharding.rules[{i}]={rule!r}; each rule is (regex, 'replicate' | 'fsdp')")
    config_lib.check_value(f"sharding.rules[{i}]", rule[1], sharding.STRATEGIES)
  if config_lib.lookup(config, "optim") is None:
    return
  config_lib.check_choices(config, {"optim.name": optim.OPTIMIZERS, "optim.schedule.type": optim.SCHEDULES})
  for i, group in enumerate(config.optim.get("groups", ()) or ()):
    if len(group) != 2:
      raise UserError(f"config.optim.groups[{i}]={group!r}; each group is (regex, overrides or None)")
    overrides = group[1]
    if not hasattr(overrides, "get"):
      continue  # None / "freeze": the group is frozen
    if "name" in overrides:
      config_lib.check_value(f"optim.groups[{i}].name", overrides["name"], optim.OPTIMIZERS)
    schedule = overrides.get("schedule") or {}
    if "type" in schedule:
      config_lib.check_value(f"optim.groups[{i}].schedule.type", schedule["type"], optim.SCHEDULES)


class Trainer:
  """Base class: override `init_variables`, `loss` and `train_iterator`."""

  # Batch keys whose values are the same on every host (not split over examples).
  replicated_batch_keys = ()

  def __init__(self, config, mesh):
    self.config = config
    self.mesh = mesh
    self.dtype = compute_dtype(config)

  @classmethod
  def check_config(cls, config):
    """Raises UserError for a config this trainer cannot run; called before anything is written.

    Subclasses check their own switches and call `super().check_config(config)`.
    """
    check_engine_config(config)

  @classmethod
  def next_run(cls, config, workdir):
    """(config, workdir) of a follow-up run after this one finished, or None (the usual case)."""
    del config, workdir

  def init_variables(self, rng):
    """Returns {"params": ..., <other collections, e.g. "batch_stats">}; traced under jit."""
    raise NotImplementedError

  def loss(self, variables, batch, rng, step):
    """Returns (scalar loss, (new non-param collections, {metric name: scalar})); traced under jit."""
    raise NotImplementedError

  def train_iterator(self):
    """A grain DatasetIterator of process-local batches (dicts of numpy arrays), endless."""
    raise NotImplementedError

  def steps_per_epoch(self):
    raise UserError(f"{type(self).__name__} has no notion of epochs; set config.total_steps instead")

  def load_init(self, path, abstract_variables):
    """Variables from a non-zsl_jax file (e.g. an OpenAI CLIP .pt); None if the format is unknown."""
    del path, abstract_variables
    return None

  def eval_offer(self):
    """What evaluators may use (named, jitted-once predict functions, eval data); none by default.

    Evaluators get this mapping in their `EvalContext`, never the trainer itself (zsl_jax.contracts).
    """
    return {}
