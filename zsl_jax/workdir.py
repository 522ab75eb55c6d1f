"""One run per workdir: an exclusive lock for the life of a run, and the config the run must keep.

A workdir's checkpoints, metrics.jsonl and config.json belong to one run. `claim(config, workdir)`,
which `zsl_jax.main` holds around every run (and around a follow-up run's sub-workdir), in order:

1. creates the folder and takes an exclusive `fcntl.flock` on `<workdir>/.lock`, which records
   {host, pid, started} while held. A second command on the workdir exits at once naming that
   holder. The kernel drops a flock when its process dies, so a killed run's lock is simply taken
   over; the file is emptied when a run ends.
2. once the workdir holds a run (a checkpoint or a metrics record), compares the requested resolved
   config with the stored one (config.json, else the newest checkpoint's config). A difference
   outside `ALLOWED_CHANGES` is refused with one line naming the keys and the ways on; nothing has
   been written by then (the lock file is left as it was found).
3. writes config.json, keeping a different earlier one as config.<n>.json.

After a run stopped on a divergence (its last metrics record has split `DIVERGED`), the optimizer
settings of `AFTER_DIVERGENCE` may change too, so a lower learning rate resumes from the last
finite checkpoint without deleting anything. Multi-host: process 0 alone locks and decides (the
workdir is on a shared filesystem); the other processes receive its decision.
"""
import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket

from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import errors
from zsl_jax import metrics as metrics_lib
from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
DIVERGED = "diverged"  # the `split` of the metrics record a diverged run ends with (zsl_jax.train_loop)

# Config keys that may change when a workdir's run is continued: the run stays the same run.
# "a.*" covers a and everything under it.
ALLOWED_CHANGES = (
    "total_steps", "num_epochs",   # a longer (or shorter) run continues from its last checkpoint
    "mode", "init.step",           # evaluating the run in place (mode=eval), at some step
    "evals.*", "log.*",            # evaluation-only and logging fields
    "checkpoint.*",                # checkpoint cadence, retention and async writing
    "mesh.*", "sharding.*", "distributed.*", "compilation_cache_dir",  # placement and platform
    "data.num_threads", "data.prefetch",  # loader parallelism: the same example stream
)  # Besides, an init.checkpoint naming the workdir itself counts as none (evaluating the run in place).
# Also allowed once the run diverged: the settings that tame a divergence (the optimizer state's
# structure must stay; a checkpoint that no longer fits is refused by zsl_jax.checkpoint).
AFTER_DIVERGENCE = ("optim.lr", "optim.schedule.*", "optim.groups")


def config_json(config):
  """The resolved config as JSON data (what config.json holds)."""
  return json.loads(config.to_json_best_effort())


def _flatten(tree, prefix=""):
  """{"optim.lr": 0.1, ...}: dotted keys of nested dicts; an empty dict is a value."""
  if isinstance(tree, dict) and tree:
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


_ABSENT = object()  # a key one of the two configs lacks


def _points_into(source, workdir):
  """True if `source` (an init.checkpoint value) is `workdir` itself or inside it (its checkpoints)."""
  if not isinstance(source, str) or not source:
    return False
  path, home = pathlib.Path(source).expanduser().resolve(), pathlib.Path(workdir).resolve()
  return path == home or home in path.parents


def _flat(config, workdir):
  """Dotted keys of a config; an init.checkpoint naming this workdir counts as none (evaluating it in place)."""
  flat = _flatten(config)
  if workdir is not None and _points_into(flat.get("init.checkpoint"), workdir):
    flat["init.checkpoint"] = ""
  return flat


def differences(stored, requested, workdir=None):
  """{dotted key: (stored value, requested value)} of every key whose value differs."""
  a, b = _flat(stored, workdir), _flat(requested, workdir)
  return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
          if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def is_allowed(key, patterns):
  return any(key == p or (p.endswith(".*") and (key == p[:-2] or key.startswith(p[:-1]))) for p in patterns)


def _short(value):
  text = "(absent)" if value is _ABSENT else json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _listing(changes, most=6):
  """'optim.lr 0.03 -> 0.1, toy.hidden 32 -> 64' of {key: (stored, requested)}."""
  shown = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in list(changes.items())[:most])
  return shown + (f" and {len(changes) - most} more" if len(changes) > most else "")


def holds_run(workdir):
  """True once the workdir has a checkpoint or a metrics record (a config.json alone is no run yet)."""
  if ckpt_lib.complete_steps(workdir / ckpt_lib.CHECKPOINT_DIR):
    return True
  return metrics_lib.last_record(workdir) is not None


def diverged(workdir):
  last = metrics_lib.last_record(workdir)
  return last is not None and last.get("split") == DIVERGED


def stored_config(workdir):
  """The config the workdir's run was started with: config.json, else its newest checkpoint's; or None."""
  path = workdir / CONFIG_FILE
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    pass
  except ValueError:
    logger.warning("%s is damaged; comparing with the newest checkpoint's config instead", path)
  return ckpt_lib.saved_config(workdir / ckpt_lib.CHECKPOINT_DIR)


def refusal(config, workdir):
  """The one-line reason `config` may not run in `workdir`, or None (logging the allowed changes)."""
  stored = stored_config(workdir)
  if stored is None or not holds_run(workdir):
    return None
  allowed = ALLOWED_CHANGES + (AFTER_DIVERGENCE if diverged(workdir) else ())
  changed = differences(stored, config_json(config), workdir)
  blocking = {k: v for k, v in changed.items() if not is_allowed(k, allowed)}
  if not blocking:
    if changed:
      logger.info("workdir %s: continuing its run with %s", workdir, _listing(changed))
    return None
  after = " (and, after a divergence, " + ", ".join(AFTER_DIVERGENCE) + ")"
  return (f"workdir {workdir} holds a run with another config: {_listing(blocking)}. Use a new --workdir for this "
          f"config (add --config.init.checkpoint={workdir} to fine-tune from that run), or keep the stored "
          f"values to continue it; changes allowed on a workdir's run: {', '.join(ALLOWED_CHANGES)}{after}")


def write_config(config, workdir):
  """DIR/config.json; a different earlier config is kept as config.<n>.json, never overwritten."""
  path = workdir / CONFIG_FILE
  text = json.dumps(config_json(config), indent=2, sort_keys=True)
  try:
    if path.exists() and path.read_text() != text:
      n = 1
      while (workdir / f"config.{n}.json").exists():
        n += 1
      path.rename(workdir / f"config.{n}.json")
    tmp = workdir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
  except OSError as e:
    if errors.is_no_space(e):
      raise errors.disk_full(workdir, len(text), CONFIG_FILE) from None
    raise UserError(f"cannot write {path} ({e.strerror or e}); choose another --workdir") from None


class Lock:
  """An exclusive flock on `<workdir>/.lock` holding {host, pid, started} while a run lives."""

  def __init__(self, workdir):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._fd = None

  def _holder(self):
    try:
      return json.loads(self.path.read_text() or "null")
    except (OSError, ValueError):
      return None

  def acquire(self):
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
        raise
      h = self._holder()
      who = (f"host {h.get('host')}, pid {h.get('pid')}, started {h.get('started')}" if isinstance(h, dict)
             else "its host and pid are not recorded yet")
      raise UserError(f"workdir {self.path.parent} is in use by another run ({who}); wait for it to end or "
                      f"use another --workdir") from None
    self._fd = fd
    stale = self._holder()
    if isinstance(stale, dict):
      logger.warning("taking over %s from pid %s on host %s, which ended without releasing it", self.path,
                     stale.get("pid"), stale.get("host"))
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)

  def release(self):
    if self._fd is None:
      return
    try:
      os.ftruncate(self._fd, 0)  # an empty lock file: no run holds the workdir
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None


def _create(workdir):
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except FileExistsError:
    raise UserError(f"--workdir {workdir} exists and is not a folder; choose another path") from None
  except OSError as e:
    raise UserError(f"cannot create --workdir {workdir} ({e.strerror or e}); choose another path") from None


@contextlib.contextmanager
def claim(config, workdir):
  """Holds `workdir` for one run of `config` (see the module docstring); UserError when refused."""
  workdir = pathlib.Path(workdir)
  lock = Lock(workdir)

  def decide():  # process 0 only
    try:
      _create(workdir)
      lock.acquire()
      reason = refusal(config, workdir)
      if reason is None:
        write_config(config, workdir)
      return reason
    except UserError as e:
      return str(e)
    except OSError as e:
      return f"cannot use --workdir {workdir} ({e.strerror or e}); choose another path"

  reason = metrics_lib.decided_on_main(decide)
  if reason is not None:
    lock.release()
    raise UserError(reason)
  try:
    yield
  finally:
    lock.release()
