"""The one way a zsl_jax command ends on bad input: `zsl_jax <command>: error: <one line>`, exit 2.

Every command (`python -m zsl_jax.main`, `python -m zsl_jax.tools.<name>`) runs its body through
`run_command`, so users see the same prefix and exit codes everywhere and never a traceback for a
mistake they can fix: 2 for bad input (`UserError`), 130 for Ctrl-C / SIGTERM after what was
finished has been kept.
"""
import sys

from zsl_jax.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(command, message, code=EXIT_USER_ERROR):
  """Prints the one error line on stderr and exits with `code`."""
  print(f"zsl_jax {command}: error: {message}", file=sys.stderr)
  sys.exit(code)


def run_command(command, body, *args, interrupted_message=None, **kwargs):
  """Runs `body(*args, **kwargs)`; a UserError or an interrupt becomes one line and an exit code.

  Returns body's return value (an exit status for tools that have one).
  """
  try:
    return body(*args, **kwargs)
  except UserError as e:
    fail(command, str(e))
  except KeyboardInterrupt:
    fail(command, interrupted_message or "interrupted", EXIT_INTERRUPTED)
  return None
