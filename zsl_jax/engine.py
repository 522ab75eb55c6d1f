"""The one train / eval loop shared by every zsl_jax method.

Phases (big_vision style): mesh -> trainer -> optimizer -> state shapes and shardings -> state
created already sharded -> resume (workdir checkpoint, else `config.init.checkpoint`, else
scratch) -> jitted, donated train step -> loop with metrics, checkpoints, evaluators, NaN guard
and preemption handling.
"""
import dataclasses
import importlib
import inspect
import json
import logging
import math
import pathlib
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import contracts
from zsl_jax import metrics as metrics_lib
from zsl_jax import optim
from zsl_jax import projects
from zsl_jax import sharding
from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
  """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


class Preempted(SystemExit):
  """SIGTERM/SIGINT arrived; a checkpoint was saved and the process exits with 128 + signal."""


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


def _due(evaluators, step):
  """Names of the evaluators whose `every_steps` divides `step`."""
  return {name for name, e in evaluators.items() if e.every_steps and step % e.every_steps == 0}


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


class _StopSignal:
  """Remembers SIGTERM/SIGINT so the loop can checkpoint at a step boundary, then exit."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for s in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[s] = signal.signal(s, self._handle)
      except ValueError:  # Not the main thread (e.g. called from a test thread): no handler.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C aborts without waiting for the checkpoint.
    self.signum = signum

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)

  def any_process(self):
    """True if any host was signalled (all hosts must agree to save at the same step)."""
    flag = self.signum is not None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      flag = bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
    return flag


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
    """Replaces params/model_state with those of another run or a trainer-specific file."""
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
    return {**state, **restored}

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
      measurements = {"loss": loss, "grad_norm": optax.global_norm(grads),
                      "param_norm": optax.global_norm(params), "lr": schedule(step), **aux}
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
    state = self._init_from(self.build_state(with_optimizer=False), source, step)
    restored_step = ckpt_lib.resolve(source, step)[1] if ckpt_lib.is_zsl_checkpoint(source) else 0
    return state, restored_step

  def build_evaluators(self):
    return build_evaluators(self.config, self.trainer.eval_offer(), self.mesh, self.workdir)

  @staticmethod
  def _run_evaluators(evaluators, state, step, writer, names=None):
    variables = {"params": state["params"], "model_state": state["model_state"]}
    for name, scheduled in evaluators.items():
      if names is None or name in names:
        writer.write(step, name, scheduled.evaluator.run(variables, int(step)))

  def _missing_final_evals(self, evaluators, step):
    """Evaluators without a record at `step` (decided on process 0, which alone writes metrics.jsonl)."""
    if not evaluators:
      return set()

    def missing():
      done = set()
      if (self.workdir / "metrics.jsonl").exists():
        done = {r["split"] for r in metrics_lib.read_metrics(self.workdir) if r["step"] == step}
      return sorted(set(evaluators) - done)

    return set(metrics_lib.decided_on_main(missing))

  def evaluate(self):
    """Restores `config.init.checkpoint` (or this workdir's latest) and runs every evaluator once."""
    state, step = self.restore_for_eval(step=self.config.init.step)
    evaluators = self.build_evaluators()
    if not evaluators:
      raise UserError("config.evals is empty: nothing to evaluate; the method's config declares its evaluators")
    writer = metrics_lib.MetricWriter(self.workdir, tensorboard=self.config.log.tensorboard)
    try:
      self._run_evaluators(evaluators, state, step, writer)
    finally:
      writer.close()
    return state

  # ---------------------------------------------------------------- the loop
  def train(self):
    config = self.config
    state = self.build_state(with_optimizer=True)
    data_iter = self.trainer.train_iterator()
    checkpointer = ckpt_lib.Checkpointer(self.workdir / ckpt_lib.CHECKPOINT_DIR,
                                         every_steps=config.checkpoint.every_steps,
                                         keep=config.checkpoint.keep,
                                         async_save=config.checkpoint.async_save)
    saveable_iter = data_iter if hasattr(data_iter, "get_state") else None
    if saveable_iter is None:
      logger.warning("the train iterator has no get_state(): a resumed run restarts the data stream")
    config_json = json.loads(config.to_json_best_effort())

    latest = checkpointer.latest_step()
    if latest is not None:
      state, _ = checkpointer.restore(self.abstract_state, saveable_iter, latest)
      logger.info("resumed from %s at step %d", checkpointer.directory, latest)
    elif config.init.checkpoint:
      state = self._init_from(state, config.init.checkpoint, config.init.step)
    start = int(jax.device_get(state["step"]))

    evaluators = self.build_evaluators()
    writer = metrics_lib.MetricWriter(self.workdir, tensorboard=config.log.tensorboard)
    train_step = self.make_train_step()
    last_saved = latest
    replicated_keys = tuple(getattr(self.trainer, "replicated_batch_keys", ()))
    log_every = max(int(config.log.every_steps), 1)

    progress = None
    if self.is_main and config.log.progress:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      progress = tqdm(total=self.total_steps, initial=start, unit="step", dynamic_ncols=True,
                      file=sys.stderr, mininterval=1.0)

    def check_finite(step, measured):
      loss = float(measured["loss"])
      if not math.isfinite(loss):
        where = (f"step {last_saved} in {checkpointer.directory}" if last_saved is not None
                 else "none (no checkpoint was saved yet)")
        raise TrainingDiverged(f"loss became {loss} at step {step}; last good checkpoint: {where}. "
                               f"Lower the learning rate or check the input data, then re-run.")

    def save(step, st):
      checkpointer.save(step, st, saveable_iter, config_json)
      return step

    if start == 0:  # The untrained (or freshly initialised) model, as a baseline row.
      self._run_evaluators(evaluators, state, 0, writer, names={n for n, e in evaluators.items() if e.at_start})

    pending = None  # (step, device metrics): read one step late so the host never stalls the device.
    try:
      with _StopSignal() as stop:
        step = start
        while step < self.total_steps:
          batch = sharding.global_batch(next(data_iter), self.mesh, replicated_keys)
          state, measured = train_step(state, batch)
          step += 1
          if pending is not None:
            host = jax.device_get(pending[1])
            check_finite(pending[0], host)
            if pending[0] % log_every == 0:
              writer.write(pending[0], "train", host)
          pending = (step, measured)
          if progress is not None:
            progress.update(1)
          stop_now = stop.any_process()
          if checkpointer.due(step) or stop_now or step == self.total_steps:
            host = jax.device_get(measured)
            check_finite(step, host)
            if step % log_every == 0 or step == self.total_steps:
              writer.write(step, "train", host)
            pending = None
            last_saved = save(step, state)
          if stop_now:
            checkpointer.close()
            logger.warning("signal %s: saved checkpoint at step %d in %s; re-run the same command "
                            "to resume", stop.signum, step, checkpointer.directory)
            raise Preempted(128 + (stop.signum or signal.SIGTERM))
          if step != self.total_steps:
            self._run_evaluators(evaluators, state, step, writer, names=_due(evaluators, step))
        if pending is not None:
          host = jax.device_get(pending[1])
          check_finite(pending[0], host)
          writer.write(pending[0], "train", host)
        if last_saved != step:
          last_saved = save(step, state)
        checkpointer.wait()
        missing = self._missing_final_evals(evaluators, step)
        if missing:
          self._run_evaluators(evaluators, state, step, writer, names=missing)
    finally:
      if progress is not None:
        progress.close()
      writer.close()
      checkpointer.close()
    return state


def run(config, workdir):
  engine = Engine(config, workdir)
  if config.mode == "train":
    return engine.train()
  if config.mode == "eval":
    return engine.evaluate()
  raise UserError(f"config.mode={config.mode!r}; use 'train' or 'eval'")
