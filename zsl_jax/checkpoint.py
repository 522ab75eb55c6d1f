"""Orbax checkpoints of the train state, the grain iterator position and the config.

Layout: `<workdir>/checkpoints/<step>/{state, data, config}`. The data item holds each host's
grain iterator state, so a resumed run continues the exact example stream. Restores take an
abstract target whose shardings decide placement, so a checkpoint written on 8 devices restores
onto one device or another mesh. Entries on disk that the target lacks are ignored (e.g. the
`model_state.progress` step counter that DAZLE/VSMR checkpoints carried before evaluators got the
step as an argument); entries the target has but the disk lacks are an error.
"""
import os
import pathlib

import grain
import jax
import orbax.checkpoint as ocp

from zsl_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
  """Saves every `every_steps`, keeps the newest `keep`, writes asynchronously."""

  def __init__(self, directory, every_steps=1000, keep=3, async_save=True):
    self.directory = pathlib.Path(directory).absolute()
    self.every_steps = int(every_steps)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            enable_async_checkpointing=async_save,
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
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state, data_iterator=None, step=None):
    """Restores (state, step); `data_iterator` (if given) is advanced in place to the saved position."""
    step = self.latest_step() if step is None else step
    items = {"state": _partial_restore_args(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return _check_complete(restored["state"], self.directory / str(step)), step

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _steps_in(directory):
  return sorted(int(p.name) for p in directory.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "state").is_dir())


def resolve(path, step=-1):
  """A workdir, its `checkpoints/` folder or one `<step>` folder -> the step's `state` directory."""
  p = pathlib.Path(os.path.expanduser(str(path)))
  if not p.exists():
    raise UserError(f"checkpoint path {p} does not exist; give a zsl_jax workdir or one of its "
                    f"checkpoints/<step> folders")
  if (p / "state").is_dir() and p.name.isdigit():
    return p / "state", int(p.name)
  if (p / CHECKPOINT_DIR).is_dir():
    p = p / CHECKPOINT_DIR
  steps = _steps_in(p) if p.is_dir() else []
  if not steps:
    raise UserError(f"no zsl_jax checkpoint found under {path}; expected <workdir>/{CHECKPOINT_DIR}/<step>/state")
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
  """
  state_dir, step = resolve(path, step)
  try:
    restored = ocp.PyTreeCheckpointer().restore(state_dir, args=_partial_restore_args(abstract_subtree))
  except (ValueError, KeyError) as e:
    raise UserError(f"checkpoint {state_dir} does not match this model ({e}); initialise from a "
                    f"checkpoint of the same architecture") from e
  return _check_complete(restored, state_dir), step


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
