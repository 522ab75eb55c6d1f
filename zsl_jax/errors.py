"""The exceptions that end a run with a message instead of a traceback.

`zsl_jax.main` and the `zsl_jax.tools.*` CLIs catch `UserError` and print its message as a single
line (no traceback), so every message must say what is wrong *and* how to fix it.
"""
import errno
import shutil


class UserError(ValueError):
  """Bad input from the user (path, file format, config value); the message names the fix."""


class DiskFull(UserError):
  """No space left while writing; the message names the path, the space needed and what is still intact."""


class TrainingDiverged(RuntimeError):
  """A loss, gradient norm or parameter norm became NaN/Inf; the message names the last finite checkpoint."""


class Preempted(SystemExit):
  """SIGTERM/SIGINT arrived; a checkpoint was saved and the process exits with 128 + signal."""


def is_no_space(error):
  """True for an ENOSPC OSError, or tensorstore's ValueError for one (it carries os_error_code='28')."""
  if isinstance(error, OSError):
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
  text = str(error)
  return isinstance(error, ValueError) and ("No space left on device" in text or "os_error_code='28'" in text)


def human_bytes(n):
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"


def disk_full(path, needed_bytes, what, intact=""):
  """The DiskFull error for writing `what` under `path`: the space needed and free there, and what is intact."""
  try:
    free = human_bytes(shutil.disk_usage(path).free)
  except OSError:
    free = "unknown"
  tail = f"; {intact}" if intact else ""
  return DiskFull(f"no space left on the device of {path} while writing {what} (needs about "
                  f"{human_bytes(needed_bytes)}, {free} free){tail}; free some space there and re-run the same "
                  f"command")
