"""What the engine needs from a method, and what an evaluator is given: the core's contracts.

A method (a package under `zsl_jax/projects/`) supplies a `Trainer` class; `config.evals` names
`Evaluator` classes. The engine owns everything else: mesh, sharded state, optimizer, the jitted
step, checkpoints, metrics, and calling the evaluators. The arrows go one way only:

  engine --builds--> Trainer(config, mesh)
  engine --reads---> trainer.eval_offer()            named predict functions + eval data sources
  engine --builds--> Evaluator(EvalContext(name, mesh, workdir, offer), **config.evals[name])
  engine --calls---> evaluator.run(state, step)      -> {metric: python scalar}

An evaluator never sees the trainer object and never calls back into it; it uses only the
functions and sources the trainer chose to offer (big_vision's `predict_fns`). No model-state
entry exists to carry information to an evaluator: the step comes as an argument.
"""
import dataclasses
import pathlib
from typing import Any, Iterator, Mapping, Optional, Protocol, runtime_checkable, Tuple

import jax
import numpy as np


@runtime_checkable
class Trainer(Protocol):
  """`config.trainer` names a module with a class `Trainer(config, mesh)` satisfying this.

  `zsl_jax.trainer.Trainer` is a base class with the optional parts filled in.
  """

  config: Any
  mesh: jax.sharding.Mesh
  replicated_batch_keys: Tuple[str, ...]  # batch keys identical on every host (not split over examples)

  @classmethod
  def check_config(cls, config) -> None:
    """Raises `UserError` (one line naming the field and its valid values) before anything is written."""

  @classmethod
  def next_run(cls, config, workdir: pathlib.Path) -> Optional[Tuple[Any, pathlib.Path]]:
    """(config, workdir) of a follow-up run once this one finished, or None."""

  def init_variables(self, rng) -> Mapping[str, Any]:
    """{"params": ..., <other collections>}; traced under `jax.eval_shape` / jit."""

  def loss(self, variables, batch, rng, step) -> Tuple[jax.Array, Tuple[Mapping, Mapping]]:
    """(scalar loss, (updated non-param collections, {metric: scalar})); traced under jit."""

  def train_iterator(self) -> Iterator[Mapping[str, np.ndarray]]:
    """Endless iterator of this host's batches; a grain DatasetIterator (get_state/set_state) to resume exactly."""

  def steps_per_epoch(self) -> float:
    """Steps of one pass over the training data (for `config.num_epochs`)."""

  def load_init(self, path: str, abstract_variables) -> Optional[Mapping[str, Any]]:
    """Host variables from a non-zsl_jax file (e.g. an OpenAI CLIP .pt), or None for an unknown format."""

  def eval_offer(self) -> Mapping[str, Any]:
    """Named predict functions and evaluation data sources, the only things evaluators get from a method."""


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """Everything an evaluator is given besides its own `config.evals.<name>` fields."""

  name: str                  # its key in config.evals: the `split` of its metric records
  mesh: jax.sharding.Mesh
  workdir: pathlib.Path
  offer: Mapping[str, Any]   # trainer.eval_offer()


@runtime_checkable
class Evaluator(Protocol):
  """`config.evals.<name>.type` names a module with `Evaluator(context: EvalContext, **fields)`.

  `fields` are the entry's keys except `type`, `every_steps` and `at_start`: when to run is the
  engine's business, kept in its own table. `zsl_jax.evaluators.base` has the one eval loop.
  """

  def run(self, state: Mapping[str, Any], step: int) -> Mapping[str, Any]:
    """Scores `state` ({"params", "model_state"}, global arrays) at training step `step`.

    Called on every process with the same arguments; returns the same {metric: python scalar}
    on every process (process 0 writes it).
    """


@runtime_checkable
class Sampler(Protocol):
  """step -> the global batch's row indices: a pure function of (seed, step), for any host count.

  Each host loads only its own slice of the rows (`zsl_jax.data.sampling.host_slice`), so a run on
  2 hosts x 4 devices trains on exactly the batches of 1 host x 8 devices.
  """

  batch_size: int  # rows per global batch (padding rows are -1)

  def __call__(self, step: int) -> np.ndarray:
    """[batch_size] int64 row indices (into the method's example source), -1 for padding."""
