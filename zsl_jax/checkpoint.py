"""Orbax checkpoints of the train state, the grain iterator position and the config.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. The data item holds each host's
grain iterator state, so a resumed run continues the exact example stream. Restores take an
abstract target whose shardings decide placement, so a checkpoint written on 8 devices restores
onto one device or another mesh. Entries on disk that the target lacks are ignored (e.g. the
`model_state.progress` step counter that DAZLE/VSMR checkpoints carried before evaluators got the
step as an argument); entries the target has but the disk lacks, or stores with another shape, are
a UserError found from the metadata alone, before any array is read (`check_compatible`).

Damage: an unreadable newest checkpoint (torn or garbled files, a missing item) is moved aside as
`<step>.unreadable` with a warning and the previous one is used. A full disk during a save ends with
a `DiskFull` error naming the path and the space needed; the last complete checkpoint stays as it was.
"""
import contextlib
import json
import logging
import pathlib
import sys
import warnings

from etils import epath
import grain
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from zsl_jax import errors
from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_SUFFIX = ".unreadable"
# What a damaged checkpoint raises inside Orbax/tensorstore (DATA_LOSS, a torn JSON file, a missing
# item or file). UserError (a ValueError) and PermissionError are handled before these.
_DAMAGE = (ValueError, KeyError, OSError)


class Checkpointer:
  """Saves every `every_steps`, keeps the newest `keep`, writes asynchronously."""

  def __init__(self, directory, every_steps=1000, keep=3, async_save=True):
    quiet_background_errors()
    self.directory = pathlib.Path(directory).absolute()
    self.every_steps = int(every_steps)
    self._saving_bytes = 0
    self._closed = False
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # what a save cut short by a kill or a full disk left behind
            create=True))

  def latest_step(self):
    return self._manager.latest_step()

  def due(self, step):
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step, state, data_iterator=None, config=None):
    items = {"state": ocp.args.PyTreeSave(state)}  # the PyTree handler restores partially (see below)
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    with self._disk_full_as_one_line():  # also reports the previous async save's failure
      self._saving_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(state))
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state, data_iterator=None, step=None):
    """Restores (state, step); `data_iterator` (if given) is advanced in place to the saved position."""
    step = self.latest_step() if step is None else step
    state_dir = self.directory / str(step) / "state"
    check_compatible(state_dir, abstract_state)
    items = {"state": _partial_restore_args(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return _check_complete(restored["state"], state_dir), step

  def restore_latest(self, abstract_state, data_iterator=None):
    """(state, step) of the newest readable checkpoint, or None when there is none.

    An unreadable one is moved aside (`<step>.unreadable`, kept for inspection) with a warning and
    the previous one is tried; hosts agree, so all of them resume from the same step.
    """
    while (step := self.latest_step()) is not None:
      try:
        result, damage = self.restore(abstract_state, data_iterator, step), None
      except UserError:
        raise
      except PermissionError as e:
        raise UserError(f"cannot read checkpoint {self.directory / str(step)} ({e}); fix its permissions") from e
      except _DAMAGE as e:
        result, damage = None, e
      if not _any_host(damage is not None):
        return result
      self._set_aside(step, damage)
    return None

  def _set_aside(self, step, damage):
    source = self.directory / str(step)
    target = _free_name(source.with_name(source.name + UNREADABLE_SUFFIX))
    if jax.process_index() == 0:
      source.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"zsl_jax set aside checkpoint {step}")
    self._manager.reload()
    previous = self.latest_step()
    logger.warning("checkpoint %s is unreadable (%s); moved it to %s and %s", source, _brief(damage), target.name,
                   f"resuming from step {previous} instead" if previous is not None else "no checkpoint is left")

  def wait(self):
    with self._disk_full_as_one_line():
      self._manager.wait_until_finished()

  def close(self):
    """Waits for the last save and releases Orbax's threads; safe to call twice."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:
      try:
        self._manager.close()
      except Exception as e:  # pylint: disable=broad-except  # after a failed save: keep the first error
        logger.warning("closing the checkpoint manager of %s: %s", self.directory, _brief(e))

  def complete_steps(self):
    return complete_steps(self.directory)

  @contextlib.contextmanager
  def _disk_full_as_one_line(self):
    """ENOSPC from a save (or from the async save it waits for) -> DiskFull naming what is intact."""
    try:
      yield
    except (OSError, ValueError) as e:
      if isinstance(e, UserError) or not errors.is_no_space(e):
        raise
      # Orbax abandons the failed save's sibling write coroutines; Python would report each as "never
      # awaited" at exit, after the one line below. Nothing is lost by them: the save already failed.
      warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
      steps = self.complete_steps()
      intact = (f"the last complete checkpoint, step {steps[-1]}, is intact" if steps
                else "no complete checkpoint was written yet")
      raise errors.disk_full(self.directory, self._saving_bytes, "a checkpoint", intact) from None


def _brief(error):
  """The first line of an exception, shortened: Orbax/tensorstore messages run over many lines."""
  text = (str(error).strip().splitlines() or [""])[0]
  return f"{type(error).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _free_name(path):
  n, candidate = 1, path
  while candidate.exists():
    n += 1
    candidate = path.with_name(f"{path.name}-{n}")
  return candidate


def _any_host(flag):
  """True if `flag` is set on any process (every host must take the same branch)."""
  if jax.process_count() > 1:
    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
  return bool(flag)


def _steps_in(directory):
  return sorted(int(p.name) for p in directory.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "state").is_dir())


def complete_steps(directory):
  """Steps under a checkpoints folder that hold a state item, ascending; [] when there is none."""
  directory = pathlib.Path(directory)
  return _steps_in(directory) if directory.is_dir() else []


def _saved_config(step_dir):
  """The config (JSON data) saved in one `<step>` folder, or None when it is absent or damaged."""
  try:
    return json.loads((pathlib.Path(step_dir) / "config" / "metadata").read_text())
  except (OSError, ValueError):
    return None


def saved_config(directory):
  """The config saved with the newest checkpoint under a checkpoints folder, or None."""
  steps = complete_steps(directory)
  return _saved_config(pathlib.Path(directory) / str(steps[-1])) if steps else None


def _checkpoint_steps(path):
  """(checkpoints folder, its steps) of a workdir, its `checkpoints/` folder or one `<step>` folder."""
  p = pathlib.Path(str(path)).expanduser()
  if not p.exists():
    raise UserError(f"checkpoint path {p} does not exist; give a zsl_jax workdir or one of its "
                    f"checkpoints/<step> folders")
  if (p / "state").is_dir() and p.name.isdigit():
    return p.parent, [int(p.name)]
  if (p / CHECKPOINT_DIR).is_dir():
    p = p / CHECKPOINT_DIR
  steps = _steps_in(p) if p.is_dir() else []
  if not steps:
    raise UserError(f"no zsl_jax checkpoint found under {path}; expected <workdir>/{CHECKPOINT_DIR}/<step>/state")
  return p, steps


def resolve(path, step=-1):
  """A workdir, its `checkpoints/` folder or one `<step>` folder -> the step's `state` directory."""
  p, steps = _checkpoint_steps(path)
  if step is None or step < 0:
    step = steps[-1]
  elif step not in steps:
    raise UserError(f"checkpoint step {step} not found under {p}; available steps: {steps}")
  return p / str(step) / "state", step


def is_zsl_checkpoint(path):
  try:
    resolve(path)
    return True
  except UserError:
    return False


def restore_subtree(path, abstract_subtree, step=-1):
  """Restores only some keys of a saved state (e.g. params and model_state, not the optimizer).

  `abstract_subtree` is a dict like {"params": ..., "model_state": ...} of ShapeDtypeStructs with
  target shardings. Used to initialise one run from another (fine-tuning, low-shot, evaluation).
  With `step` < 0 the newest readable step is used (an unreadable one is skipped with a warning,
  and left in place: it belongs to another run).
  """
  quiet_background_errors()
  folder, steps = _checkpoint_steps(path)
  if step is not None and step >= 0:
    resolve(path, step)
    steps = [step]
  for i, candidate in enumerate(reversed(steps)):
    state_dir = folder / str(candidate) / "state"
    check_compatible(state_dir, abstract_subtree)
    try:
      with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(state_dir, args=_partial_restore_args(abstract_subtree))
      return _check_complete(restored, state_dir), candidate
    except UserError:
      raise
    except _DAMAGE as e:
      if i == len(steps) - 1:
        raise UserError(f"checkpoint {state_dir.parent} is unreadable ({_brief(e)}); pass a readable "
                        f"checkpoint (another step with --config.init.step)") from e
      logger.warning("checkpoint %s is unreadable (%s); using the previous step", state_dir.parent, _brief(e))
  raise AssertionError("unreachable")


def _stored_shapes(state_dir):
  """{Orbax entry name ("params.Dense_0.kernel"): shape} from the checkpoint's metadata (no array read)."""
  metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
  return {m.name: tuple(m.shape) for m in jax.tree.leaves(metadata.tree)
          if getattr(m, "name", None) is not None and getattr(m, "shape", None) is not None}


def _stored_trainer(state_dir):
  config = _saved_config(pathlib.Path(state_dir).parent)
  return config.get("trainer") if isinstance(config, dict) else None


def check_compatible(state_dir, abstract):
  """UserError naming the first entry of `abstract` that the checkpoint lacks or stores with another shape.

  Reads the metadata only, so a checkpoint of another method (DAZLE given to HGR-Net) or of other
  shapes (12 vs 24 attributes) is refused before anything is restored. Damaged metadata raises
  what Orbax raises (see `Checkpointer.restore_latest`).
  """
  stored = _stored_shapes(state_dir)
  missing, wrong = [], []
  leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
  leaves.sort(key=lambda item: getattr(item[0][0], "key", None) != "params")  # name a parameter first
  for path, leaf in leaves:
    shape = stored.get(".".join(ocp.tree.str_keypath(path)))
    if shape is None:
      missing.append(jax.tree_util.keystr(path))
    elif shape != tuple(leaf.shape):
      wrong.append(f"{jax.tree_util.keystr(path)} is stored with shape {shape}, this model expects {tuple(leaf.shape)}")
  if not missing and not wrong:
    return
  problem = wrong[0] if wrong else f"it lacks {missing[0]} of this model"
  others = len(wrong) + len(missing) - 1
  trainer = _stored_trainer(state_dir)
  raise UserError(f"checkpoint {pathlib.Path(state_dir).parent} does not fit this model: {problem}"
                  f"{f' ({others} more entries differ)' if others else ''}"
                  f"{f'; it was written by trainer {trainer!r}' if trainer else ''}; pass a checkpoint of the "
                  f"same method and shapes, or use a new --workdir for this config")


def _partial_restore_args(abstract):
  """Restores the target's entries only; the disk may hold more (older layouts), never fewer."""
  return ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                                partial_restore=True)


def _check_complete(restored, where):
  """Orbax's partial restore leaves a target entry missing on disk as its ShapeDtypeStruct: refuse that."""
  missing = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]
             if isinstance(x, jax.ShapeDtypeStruct)]
  if missing:
    raise UserError(f"checkpoint {where} lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} of this "
                    f"model; restore a checkpoint of the same architecture and optimizer")
  return restored


def abstract_like(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings, the restore target Orbax expects."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class _NoTracebacks(logging.Filter):
  """Keeps Orbax's (and asyncio's) background-thread error lines but drops their tracebacks.

  The error that matters reaches the main thread, which ends with one line; the same failure
  logged from each of Orbax's threads would otherwise bury it under pages of traceback.
  """

  def filter(self, record):
    if record.name == "asyncio" or "/orbax/" in (record.pathname or ""):
      record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


_QUIET = {"installed": False}


def quiet_background_errors():
  """Installs, once, the filters that keep Orbax's background failures to one line each.

  After a failed save or restore, tensorstore callbacks still arriving for Orbax's closed event
  loop raise "Event loop is closed" inside C++ callbacks; they reach `sys.unraisablehook` and are
  dropped here (nothing can act on them). Everything else goes to the previous hook.
  """
  if _QUIET["installed"]:
    return
  _QUIET["installed"] = True
  for name in ("absl", "asyncio"):
    logging.getLogger(name).addFilter(_NoTracebacks())
  previous = sys.unraisablehook

  def hook(unraisable):
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
      return
    previous(unraisable)

  sys.unraisablehook = hook
