"""Build-once folders for generated demo data, shared by every project.

Demo configs generate their data on first use and reuse it afterwards. The folder's name carries a
hash of the generator's arguments and of its version constant, so changing either builds a new
folder instead of silently reusing data an older generator wrote. A build goes into a temporary
folder next to the target and is renamed into place in one step, so a folder with the final name is
always complete. Concurrent builders (several processes, or hosts sharing a filesystem) each build;
the first rename wins and the others delete their copy and use the winner's. `main_process_first`
spares multi-host runs the duplicate work: process 0 builds while the others wait at a barrier.
"""
import hashlib
import inspect
import json
import logging
import os
import pathlib
import shutil
import tempfile

import jax
from jax.experimental import multihost_utils

from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)

INFO_FILE = "demo_cache.json"  # Written into every build: what made it (for people, not read back).


def arguments(generator, **kwargs):
  """`kwargs` plus the defaults of every other keyword of `generator`: all that decides its output."""
  bound = inspect.signature(generator).bind_partial(**kwargs)
  bound.apply_defaults()
  return dict(bound.arguments)


def key(params, version):
  """Short hash of (params, version); params must be JSON-serialisable (str() is used otherwise)."""
  text = json.dumps({"params": params, "version": version}, sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def folder(parent, name, params, version):
  """Where `build_once` keeps the build of (name, params, version): `<parent>/<name>_<key>`."""
  return pathlib.Path(parent).expanduser() / f"{name}_{key(params, version)}"


def build_once(parent, name, params, build, *, version):
  """The folder of (name, params, version) under `parent`, built by `build` unless it exists.

  Args:
    parent: folder that holds the builds (created when missing).
    name: readable prefix of the build folder's name.
    params: JSON-serialisable arguments of the generator (see `arguments`); part of the key.
    build: `build(work, final)` writes everything into the folder `work`; `final` is where the
      folder will live once complete, for files that must name their own location.
    version: the generator's version constant; bump it when the generator changes its output.
  Returns:
    pathlib.Path of the complete build.
  """
  target = folder(parent, name, params, version)
  if target.is_dir():
    return target
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
  except OSError as e:
    raise UserError(f"cannot write demo data under {target.parent} ({e}); point the config's demo data "
                    f"folder at a writable place") from e
  try:
    build(work, target)
    info = {"name": name, "version": version, "params": params}
    (work / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
  except BaseException:
    shutil.rmtree(work, ignore_errors=True)
    raise
  try:
    os.rename(work, target)
  except OSError:
    shutil.rmtree(work, ignore_errors=True)
    if not target.is_dir():
      raise
    logger.info("another process built %s first; using its copy", target)
  else:
    logger.info("demo data written to %s", target)
  return target


def main_process_first(fn, what):
  """fn() on process 0, then on every other process once process 0 is done (a barrier named `what`).

  With a shared filesystem the others then find process 0's build; without one each host builds
  its own copy after the barrier.
  """
  if jax.process_count() == 1:
    return fn()
  result = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(what)
  return result if jax.process_index() == 0 else fn()
