"""The one train / eval loop shared by every zsl_jax method.

Phases (big_vision style): mesh -> trainer -> optimizer -> state shapes and shardings -> state
created already sharded -> resume (workdir checkpoint, else `config.init.checkpoint`, else
scratch) -> jitted, donated train step -> `train_loop.TrainLoop` (metrics, checkpoints,
evaluators, divergence guard, preemption). Whatever way `train()` ends, the checkpoint manager and
the data iterator are closed, so no background thread outlives the run's error message.
"""
import dataclasses
import importlib
import inspect
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import optax

from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import contracts
from zsl_jax import metrics as metrics_lib
from zsl_jax import optim
from zsl_jax import projects
from zsl_jax import sharding
from zsl_jax import train_loop
from zsl_jax.data import device_prefetch
from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)


def import_by_convention(name, package):
  """A short name ("hgr", "gzsl") or a dotted module path ("tests.toy_trainer") -> the module."""
  table = projects.TRAINERS if package == "trainers" else projects.EVALUATORS
  field = "trainer" if package == "trainers" else "evals.<name>.type"
  if "." not in name and name not in table:
    raise UserError(f"config.{field}={name!r} is not a shipped {package[:-1]} ({', '.join(sorted(table))}) "
                    f"nor a dotted module path; check config.{field}")
  module = table.get(name, name)
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name and module.startswith(e.name):
      raise UserError(f"no {package[:-1]} module {module!r} for {name!r}; check config.{field}") from e
    raise


@dataclasses.dataclass(frozen=True)
class Scheduled:
  """An evaluator and when the engine runs it (the schedule stays here, not on the evaluator)."""
  evaluator: contracts.Evaluator
  every_steps: int
  at_start: bool


def build_evaluators(config, offer, mesh, workdir):
  """{name: Scheduled} of `config.evals`, each built from its context and its own fields."""
  evaluators = {}
  for name, ev_cfg in config.get("evals", {}).items():
    fields = dict(ev_cfg)
    kind = fields.pop("type", None)
    if not kind:
      raise UserError(f"config.evals.{name} has no 'type'; name an evaluator module, e.g. type='gzsl'")
    every = int(fields.pop("every_steps", 0))
    at_start = bool(fields.pop("at_start", False))
    cls = import_by_convention(kind, "evaluators").Evaluator
    context = contracts.EvalContext(name=name, mesh=mesh, workdir=pathlib.Path(workdir), offer=offer)
    try:
      inspect.signature(cls).bind(context, **fields)
    except TypeError as e:
      raise UserError(f"config.evals.{name} (type {kind!r}): {e}; remove or rename that field") from e
    evaluators[name] = Scheduled(cls(context, **fields), every, at_start)
  return evaluators


def total_steps(config, trainer):
  if config.total_steps > 0:
    return int(config.total_steps)
  if config.num_epochs > 0:
    return int(math.ceil(config.num_epochs * trainer.steps_per_epoch()))
  raise UserError("set config.total_steps or config.num_epochs to a positive number")


def _split_variables(variables):
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def trainer_class(config):
  """The Trainer class named by `config.trainer` (a short name or a dotted module path)."""
  return import_by_convention(config.trainer, "trainers").Trainer


class Engine:
  """Builds the sharded state and the step functions for one config; `train()` / `evaluate()`."""

  def __init__(self, config, workdir, mesh=None):
    self.config = config
    self.workdir = pathlib.Path(workdir)
    self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
    self.trainer = trainer_class(config)(config, self.mesh)
    self.is_main = jax.process_index() == 0
    init_rng, self._train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    self._init_rng = init_rng

  # ---------------------------------------------------------------- state shapes and shardings
  def build_state(self, with_optimizer):
    """Creates the state directly with its target shardings (never fully on one device)."""
    if with_optimizer:
      self.total_steps = total_steps(self.config, self.trainer)
      self.tx, self.schedules = optim.make(self.config.optim, self.total_steps)

    def init(rng):
      params, model_state = _split_variables(self.trainer.init_variables(rng))
      state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state}
      if with_optimizer:
        state["opt_state"] = self.tx.init(params)
      return state

    abstract = jax.eval_shape(init, self._init_rng)
    self.state_shardings = sharding.infer_shardings(abstract, self.mesh, self.config.sharding)
    self.abstract_state = ckpt_lib.abstract_like(abstract, self.state_shardings)
    return jax.jit(init, out_shardings=self.state_shardings)(self._init_rng)

  def _variables_target(self):
    return {k: self.abstract_state[k] for k in ("params", "model_state")}

  def _init_from(self, state, path, step=-1):
    """(state with params/model_state of another run or a trainer-specific file, the step they come from)."""
    target = self._variables_target()
    if ckpt_lib.is_zsl_checkpoint(path):
      restored, step = ckpt_lib.restore_subtree(path, target, step)
      logger.info("initialised params from %s (step %d)", path, step)
    else:
      local = pathlib.Path(str(path)).expanduser()
      if not local.exists():
        raise UserError(f"config.init.checkpoint={path!r} does not exist; give a zsl_jax workdir, "
                        f"a checkpoint step folder or a file the trainer can import")
      host = self.trainer.load_init(str(local), {"params": target["params"], **target["model_state"]})
      if host is None and local.is_dir():
        raise UserError(f"no zsl_jax checkpoint found under {path}; pass --config.init.checkpoint=<a training "
                        f"workdir or its checkpoints/<step> folder>")
      if host is None:
        raise UserError(f"config.init.checkpoint={path!r} is neither a zsl_jax checkpoint nor a file "
                        f"that trainer {self.config.trainer!r} can import")
      params, model_state = _split_variables(host)
      restored = jax.device_put({"params": params, "model_state": model_state},
                                {k: self.state_shardings[k] for k in ("params", "model_state")})
      logger.info("initialised params from %s", path)
      step = 0
    return {**state, **restored}, step

  # ---------------------------------------------------------------- the train step
  def make_train_step(self):
    trainer, tx, schedule = self.trainer, self.tx, self.schedules["default"]
    base_rng = self._train_rng

    def train_step(state, batch):
      step = state["step"]
      rng = jax.random.fold_in(base_rng, step)

      def loss_fn(params):
        variables = {"params": params, **state["model_state"]}
        loss, (new_model_state, aux) = trainer.loss(variables, batch, rng, step)
        return loss, (new_model_state, aux)

      (loss, (new_model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
      updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
      params = optax.apply_updates(state["params"], updates)
      new_state = {"step": step + 1, "params": params,
                   "model_state": {**state["model_state"], **dict(new_model_state or {})},
                   "opt_state": opt_state}
      # The guard (train_loop): param_norm is finite only if every parameter is, grad_norm only if every
      # squared gradient is (so Adam/RMSprop moments stay finite); FINITE_KEY checks the (small) model state.
      # Checking opt_state itself would read 2x the parameters again (+8% CPU time of an RN50 step).
      measurements = {"loss": loss, "grad_norm": optax.global_norm(grads),
                      "param_norm": optax.global_norm(params), "lr": schedule(step), **aux,
                      train_loop.FINITE_KEY: _all_finite(new_state["model_state"])}
      return new_state, measurements

    return jax.jit(train_step, out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                   donate_argnums=(0,))

  # ---------------------------------------------------------------- evaluation
  def restore_for_eval(self, source=None, step=-1):
    """(state without optimizer, its step): params/model_state restored from a checkpoint or file.

    `source`: a zsl_jax workdir or checkpoint folder (`step` picks one, -1 the latest), or a file the
    trainer can import (step 0); default `config.init.checkpoint`, else this workdir.
    """
    source = source or self.config.init.checkpoint or str(self.workdir)
    return self._init_from(self.build_state(with_optimizer=False), source, step)

  def build_evaluators(self):
    return build_evaluators(self.config, self.trainer.eval_offer(), self.mesh, self.workdir)

  def evaluate(self):
    """Restores `config.init.checkpoint` (or this workdir's latest) and runs every evaluator once."""
    state, step = self.restore_for_eval(step=self.config.init.step)
    evaluators = self.build_evaluators()
    if not evaluators:
      raise UserError("config.evals is empty: nothing to evaluate; the method's config declares its evaluators")
    writer = metrics_lib.MetricWriter(self.workdir, tensorboard=self.config.log.tensorboard)
    try:
      train_loop.run_evaluators(evaluators, state, step, writer,
                                progress=self.is_main and bool(self.config.log.progress))
    finally:
      writer.close()
    return state

  # ---------------------------------------------------------------- the loop
  def train(self):
    """Trains to `total_steps`, resuming from this workdir's latest checkpoint when there is one."""
    config = self.config
    state = self.build_state(with_optimizer=True)
    # Global batches sent to the devices ahead of the step; the checkpointed position stays exact.
    data_iter = device_prefetch.prefetch(self.trainer.train_iterator(), self.mesh,
                                         getattr(self.trainer, "replicated_batch_keys", ()))
    checkpointer = ckpt_lib.Checkpointer(self.workdir / ckpt_lib.CHECKPOINT_DIR,
                                         every_steps=config.checkpoint.every_steps,
                                         keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.async_save)
    saveable_iter = data_iter if hasattr(data_iter, "get_state") else None
    if saveable_iter is None:
      logger.warning("the train iterator has no get_state(): a resumed run restarts the data stream")
    closers = (checkpointer.close, getattr(data_iter, "close", None))
    try:
      resumed = checkpointer.restore_latest(self.abstract_state, saveable_iter)
      if resumed is not None:
        state, latest = resumed
        logger.info("resumed from %s at step %d", checkpointer.directory, latest)
      else:
        latest = None
        if config.init.checkpoint:
          state, _ = self._init_from(state, config.init.checkpoint, config.init.step)
      loop = train_loop.TrainLoop(self, checkpointer, saveable_iter, last_saved=latest)
      state = loop.run(state, data_iter)
    except BaseException:
      train_loop.close_all(*closers, quiet=True)
      raise
    train_loop.close_all(*closers)
    return state


def _all_finite(tree):
  """One on-device bool: every floating-point leaf of `tree` is free of NaN/Inf."""
  checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(checks).all() if checks else jnp.array(True)


def run(config, workdir):
  engine = Engine(config, workdir)
  if config.mode == "train":
    return engine.train()
  if config.mode == "eval":
    return engine.evaluate()
  raise UserError(f"config.mode={config.mode!r}; use 'train' or 'eval'")
