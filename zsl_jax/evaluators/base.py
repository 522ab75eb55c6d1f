"""Evaluator interface: `config.evals.<name> = dict(type=T, every_steps=N, **kwargs)`.

The engine builds `zsl_jax.evaluators.<T>.Evaluator(trainer=..., mesh=..., workdir=..., **kwargs)`
(or `<T>.Evaluator` for a dotted module path) and calls `run(state)` every N steps and at the end
(and before the first step with `at_start=True`, a baseline row at step 0);
the returned {metric: value} dict is written to the metrics stream with `split=<name>`.
"""


class Evaluator:

  def __init__(self, trainer, mesh, workdir, **kwargs):
    self.trainer = trainer
    self.mesh = mesh
    self.workdir = workdir
    self.kwargs = kwargs

  def run(self, state):
    """`state` has "params" and "model_state" (global arrays); returns {name: python scalar}."""
    raise NotImplementedError


def to_host(tree):
  """Global jax.Arrays -> full numpy arrays on every host (multi-host safe).

  Arrays sharded over devices of several processes cannot be read with device_get; gathering
  keeps per-example evaluation outputs exact on clusters. Prefer reducing on device (sums of
  masked hits) when only totals are needed.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return multihost_utils.process_allgather(tree, tiled=True)
