"""The DAZLE AWA2 demo with its gzsl evaluator under another `config.evals` key, named by module path.

Test-only: model selection must follow the key it is configured under, not the short name "gzsl".
"""
import ml_collections

from zsl_jax.projects.attr import config as attr_config

KEY = "selection"


def get_config(arg=None):
  del arg
  c = attr_config.dazle_config("AWA2", demo=True)
  fields = dict(c.evals.gzsl.to_dict(), type="zsl_jax.projects.attr.evaluator")
  c.evals = ml_collections.ConfigDict({KEY: fields})
  return c
