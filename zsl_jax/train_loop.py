"""The training loop's bookkeeping, apart from the engine that builds the state and the step.

Per step: feed the jitted step one global batch, read its metrics one step late (so the host never
stalls the device), log them with the interval's throughput accounting (`chrono`), checkpoint when
due, run due evaluators, and stop cleanly on SIGTERM or SIGINT with a checkpoint. After the last
step, evaluators without a record at that step run once (a resumed, finished run does not repeat them).

Divergence: a step whose loss, gradient norm or parameter norm is NaN/Inf, or whose new model state
(e.g. BatchNorm statistics) has a non-finite entry (`FINITE_KEY`, computed in the step on device),
ends the run. A state is saved only after its own step's metrics were read and found finite, so the
checkpoint the message names holds finite parameters. The run ends with a `diverged` metrics record,
which lets a re-run with a lower learning rate resume in the same workdir
(`zsl_jax.workdir.AFTER_DIVERGENCE`).
"""
import json
import logging
import math
import signal

import jax
from jax.experimental import multihost_utils
import numpy as np

from zsl_jax import chrono as chrono_lib
from zsl_jax import console
from zsl_jax import metrics as metrics_lib
from zsl_jax import sharding
from zsl_jax import workdir as workdir_lib
from zsl_jax.errors import Preempted
from zsl_jax.errors import TrainingDiverged

logger = logging.getLogger(__name__)

FINITE_KEY = "_state_finite"  # a step's on-device check of its new state (not written to metrics.jsonl)
WATCHED = ("loss", "grad_norm", "param_norm")  # divergence stops the run when one of these is NaN/Inf


def close_all(*closers, quiet=False):
  """Calls every closer in order, even when one fails; the first failure is re-raised unless `quiet`.

  `quiet` is for exit paths that already carry an error: a second failure (e.g. the async save
  that the error interrupted) is logged as one line instead of replacing the first.
  """
  first = None
  for close in closers:
    if close is None:
      continue
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      if quiet:
        logger.warning("while closing after an error: %s: %s", type(e).__name__, (str(e).splitlines() or [""])[0])
      first = first or e
  if first is not None and not quiet:
    raise first


def run_evaluators(evaluators, state, step, writer, names=None, progress=False):
  """Runs the named (default: all) scheduled evaluators and writes their records at `step`.

  `progress`: each evaluation shows its own bar of batches (`console.eval_bars`), gone once it ends.
  """
  variables = {"params": state["params"], "model_state": state["model_state"]}
  for name, scheduled in evaluators.items():
    if names is None or name in names:
      with console.eval_bars(name, progress):
        writer.write(step, name, scheduled.evaluator.run(variables, int(step)))


def due(evaluators, step):
  """Names of the evaluators whose `every_steps` divides `step`."""
  return {name for name, e in evaluators.items() if e.every_steps and step % e.every_steps == 0}


def missing_final_evals(evaluators, workdir, step):
  """Evaluators without a record at `step` (decided on process 0, which alone writes metrics.jsonl)."""
  if not evaluators:
    return set()

  def missing():
    done = set()
    if (workdir / "metrics.jsonl").exists():
      done = {r["split"] for r in metrics_lib.read_metrics(workdir) if r["step"] == step}
    # A record under one of the evaluator's former names (e.g. HGR's `21k_d`, now `in21k_d`) counts too.
    return sorted(n for n, e in evaluators.items()
                  if n not in done and not done & set(getattr(e.evaluator, "legacy_names", ())))

  return set(metrics_lib.decided_on_main(missing))


class StopSignal:
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
      flag = bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
    return flag


class TrainLoop:
  """One training run's writer, checkpointer, progress bar and evaluators, around the engine's step."""

  def __init__(self, engine, checkpointer, saveable_iter, last_saved):
    self.engine, self.config = engine, engine.config
    self.checkpointer, self.saveable_iter, self.last_saved = checkpointer, saveable_iter, last_saved
    self.total_steps = engine.total_steps
    self.log_every = max(int(self.config.log.every_steps), 1)
    self.config_json = json.loads(self.config.to_json_best_effort())
    self.replicated_keys = tuple(getattr(engine.trainer, "replicated_batch_keys", ()))
    self.evaluators = engine.build_evaluators()
    self.writer = None
    self.progress = None
    self.show_progress = bool(engine.is_main and self.config.log.progress)
    self.checked_step = last_saved  # the newest step whose metrics were found finite (a resumed one was)
    self.chrono = chrono_lib.Chrono(engine.mesh.devices.size, engine.mesh.devices.flat[0].device_kind)

  def divergence(self, measured):
    """'loss=nan, param_norm=inf' of a step's non-finite metrics, or '' when the step is finite."""
    bad = [f"{k}={float(measured[k])}" for k in WATCHED if k in measured and not math.isfinite(float(measured[k]))]
    if FINITE_KEY in measured and not bool(measured[FINITE_KEY]):
      bad.append("non-finite model state")
    return ", ".join(bad)

  def diverged(self, step, problem):
    """Records the divergence (the `diverged` record a re-run reads) and raises TrainingDiverged."""
    directory = self.checkpointer.directory
    self.writer.write(step, workdir_lib.DIVERGED, {"reason": problem, "last_checkpoint": (
        -1 if self.last_saved is None else self.last_saved)})
    how = ("lower --config.optim.lr (optim.lr, optim.schedule.* and optim.groups may change in this workdir after "
           "a divergence) and re-run: it resumes from")
    if self.last_saved is None:
      raise TrainingDiverged(f"training diverged at step {step} ({problem}) before its first checkpoint: nothing "
                             f"was saved; {how} step 0")
    raise TrainingDiverged(f"training diverged at step {step} ({problem}), which was not saved; last good "
                           f"checkpoint: step {self.last_saved} in {directory} (its parameters are finite); "
                           f"{how} there")

  def record(self, step, measured, force=False):
    """Reads a step's metrics to the host, checks them, and writes them on log steps (and on divergence)."""
    host = dict(jax.device_get(measured))
    problem = self.divergence(host)
    host.pop(FINITE_KEY, None)
    if force or problem or step % self.log_every == 0:
      accounting = self.chrono.interval(step)
      self.writer.write(step, "train", {**host, **accounting})
      if self.progress is not None:
        self.progress.set_postfix(chrono_lib.postfix(accounting), refresh=False)
    if problem:
      self.diverged(step, problem)
    self.checked_step = step

  def save(self, step, state):
    if step != self.checked_step:  # the invariant behind "the last good checkpoint holds finite parameters"
      raise AssertionError(f"step {step} is saved before its metrics were checked (last checked: {self.checked_step})")
    with self.chrono.paused():
      self.checkpointer.save(step, state, self.saveable_iter, self.config_json)
    self.last_saved = step

  def run(self, state, data_iter):
    start = int(jax.device_get(state["step"]))
    self.writer = metrics_lib.MetricWriter(self.engine.workdir, tensorboard=self.config.log.tensorboard)
    try:
      if start < self.total_steps:
        state = self._train(state, data_iter, start)
      elif not self._finish(state, start):  # a re-run of a finished run: no bar, no step
        logger.info("already complete (step %d of %d); nothing to do — metrics in %s", start, self.total_steps,
                    self.engine.workdir / "metrics.jsonl")
    except BaseException:
      close_all(*self._closers(), quiet=True)
      raise
    close_all(*self._closers())
    return state

  def _train(self, state, data_iter, start):
    """Start evaluations, the train phase under its bar, the last save, then the final evaluations."""
    if hasattr(data_iter, "start"):  # Read ahead while the start evaluations and the compile run.
      data_iter.start()
    if start == 0:  # The untrained (or freshly initialised) model, as a baseline row.
      self._evaluate(state, 0, {n for n, e in self.evaluators.items() if e.at_start})
    if self.show_progress:  # opened after the start evaluations: one bar per phase
      self.progress = console.train_bar(self.total_steps, start)
    with StopSignal() as stop:
      state, step = self._steps(state, data_iter, start, stop)
    if self.last_saved != step:
      self.save(step, state)
    self.checkpointer.wait()
    if self.progress is not None:  # the train phase's bar ends before the final evaluations' bars
      self.progress.close()
    self._finish(state, step)
    return state

  def _evaluate(self, state, step, names):
    run_evaluators(self.evaluators, state, step, self.writer, names=names, progress=self.show_progress)

  def _finish(self, state, step):
    """Runs the evaluators without a record at the last step; returns whether any ran."""
    missing = missing_final_evals(self.evaluators, self.engine.workdir, step)
    if missing:
      self._evaluate(state, step, missing)
    return bool(missing)

  def _closers(self):
    """In order: the progress bar, the checkpointer (waits for the last save), the metric writer."""
    return (self.progress.close if self.progress is not None else None, self.checkpointer.close, self.writer.close)

  def _steps(self, state, data_iter, step, stop):
    """The step loop proper: returns (state, last step) or raises Preempted / TrainingDiverged."""
    train_step = chrono_lib.CompiledStep(self.engine.make_train_step(), self.chrono,
                                         self.engine.mesh.devices.size, self.replicated_keys)
    pending = None  # (step, device metrics): read one step late so the host never stalls the device.
    self.chrono.start(step)
    while step < self.total_steps:
      with self.chrono.waiting():
        batch = sharding.global_batch(next(data_iter), self.engine.mesh, self.replicated_keys)
      state, measured = train_step(state, batch)
      console.steady(self.progress)  # the first step returned: its compile is over
      step += 1
      if pending is not None:
        self.record(*pending)
      pending = (step, measured)
      if self.progress is not None:
        self.progress.update(1)
      stop_now = stop.any_process()
      if self.checkpointer.due(step) or stop_now or step == self.total_steps:
        self.record(step, measured, force=step == self.total_steps)
        pending = None
        self.save(step, state)
      if stop_now:
        self.checkpointer.close()
        logger.warning("signal %s: saved checkpoint at step %d in %s; re-run the same command to resume",
                       stop.signum, step, self.checkpointer.directory)
        raise Preempted(128 + (stop.signum or signal.SIGTERM))
      if step != self.total_steps:
        with self.chrono.paused():
          self._evaluate(state, step, due(self.evaluators, step))
      self.chrono.tick()
    if pending is not None:
      self.record(*pending, force=True)
    return state, step
