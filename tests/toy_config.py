"""Config of the test-only toy trainer (tests/toy_trainer.py); not a user-facing method."""
import ml_collections

from zsl_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, steps=12)
  c = config_lib.base_config()
  c.trainer = "tests.toy_trainer"
  c.total_steps = a.steps
  c.batch_size = 32
  c.optim = config_lib.optim_config(name="adamw", lr=3e-2, weight_decay=1e-4, grad_clip_norm=1.0,
                                     schedule=dict(type="cosine", warmup_steps=2))
  c.checkpoint.every_steps = 4
  c.log.every_steps = 1
  c.log.progress = False
  c.compilation_cache_dir = ""
  c.toy = ml_collections.ConfigDict(dict(
      dim=16, hidden=32, classes=4, train_examples=256, nan_at_step=-1, sleep_per_batch=0.0))
  c.evals.heldout = ml_collections.ConfigDict(dict(type="tests.toy_trainer", every_steps=0,
                                                   num_examples=100, batch_size=16))
  return c
