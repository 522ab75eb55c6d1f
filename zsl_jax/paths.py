"""Output paths checked before any work starts: one line naming the path, instead of a traceback hours later.

`check_writable_dir` is for folders a command creates or fills (a run's workdir, a tool's `--out` folder),
`check_writable_file` for single output files. Both only look (nothing is created), so a refused
command leaves no trace; the writers create the folders when they write.
"""
import logging
import os

from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)


def _nearest_existing(path):
  """`path` or its closest ancestor that exists (the folder a mkdir -p would start from)."""
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _check_creatable(path, what):
  """UserError unless the missing folder `path` can be created (its nearest existing ancestor is a writable folder)."""
  base = _nearest_existing(os.path.dirname(path))
  if not os.path.isdir(base):
    raise UserError(f"{what} {path} cannot be created: {base} is a file, not a folder; choose another path")
  if not os.access(base, os.W_OK | os.X_OK):
    raise UserError(f"{what} {path} cannot be created: {base} is not writable (permissions or a read-only "
                    f"filesystem); choose another path")


def check_writable_dir(path, what):
  """UserError unless `path` is a writable folder or can be created as one; returns the expanded absolute path.

  Args:
    path: the folder (`~` is expanded).
    what: how the user named it, for the message (e.g. "--workdir", "output folder").
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.isdir(path):
    if not os.access(path, os.W_OK | os.X_OK):
      raise UserError(f"{what} {path} is not writable (permissions or a read-only filesystem); choose another "
                      f"folder or fix its permissions")
  elif os.path.lexists(path):
    raise UserError(f"{what} {path} exists and is not a folder; choose another path")
  else:
    _check_creatable(path, what)
  return path


def check_writable_file(path, what):
  """UserError unless the file `path` can be written (replaced if it exists); returns the expanded absolute path."""
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if os.path.isdir(path):
    raise UserError(f"{what} {path} is a folder; name a file inside it")
  if os.path.lexists(path) and not os.access(path, os.W_OK):
    raise UserError(f"{what} {path} is not writable; choose another file or fix its permissions")
  folder = os.path.dirname(path)
  if not os.path.isdir(folder):
    _check_creatable(path, what)
  elif not os.access(folder, os.W_OK | os.X_OK):
    raise UserError(f"{what} {path} cannot be written: its folder {folder} is not writable (permissions or a "
                    f"read-only filesystem); choose another path")
  return path


def make_parent(path):
  """Creates the folder of the output file `path` (after `check_writable_file` accepted it)."""
  os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
