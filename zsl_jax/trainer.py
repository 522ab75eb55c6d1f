"""What a method supplies to the shared engine.

A trainer module `zsl_jax.trainers.<name>` exposes `Trainer(config, mesh)`; the engine owns
everything else (sharding, optimizer, jit, checkpoints, metrics, evaluators). The trainer only
says how to build variables, how a batch becomes a loss, and where the batches come from.
"""
import jax.numpy as jnp

from zsl_jax.errors import UserError


def compute_dtype(config):
  """bfloat16 on GPU/TPU and float32 on CPU for "auto"; parameters always stay float32."""
  import jax  # pylint: disable=import-outside-toplevel
  name = config.get("compute_dtype", "auto")
  if name == "auto":
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
  if name not in ("float32", "bfloat16", "float16"):
    raise UserError(f"compute_dtype={name!r}; use auto, float32 or bfloat16")
  return jnp.dtype(name)


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
    """Raises UserError for a config this trainer cannot run; called before anything is written."""
    del config

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
