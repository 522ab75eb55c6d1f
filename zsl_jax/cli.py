"""The one way a zsl_jax command ends on bad input: `zsl_jax <command>: error: <one line>`, exit 2.

Every command (`python -m zsl_jax.main`, `python -m zsl_jax.tools.<name>`) runs its body through
`run_command` and parses its arguments with `ArgumentParser`, so users see the same prefix and exit
codes everywhere and never a traceback for a mistake they can fix: 2 for bad input (`UserError`,
a wrong option), 130 for Ctrl-C / SIGTERM after what was finished has been kept.
"""
import argparse
import logging
import sys

from zsl_jax.errors import UserError

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def error_line(command, message):
  """`zsl_jax <command>: error: <message>`, the message folded onto one line."""
  return f"zsl_jax {command}: error: {' '.join(str(message).split())}"


def report(command, message):
  """Prints the one error line on stderr."""
  print(error_line(command, message), file=sys.stderr)


def fail(command, message, code=EXIT_USER_ERROR):
  """Prints the one error line on stderr and exits with `code`."""
  report(command, message)
  sys.exit(code)


def show_warnings():
  """Warnings on the console as `WARNING: <message>` (e.g. the count of inputs a tool leaves out)."""
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


def run_command(command, body, *args, interrupted_message=None, **kwargs):
  """Runs `body(*args, **kwargs)` and returns the command's exit status.

  A UserError or an interrupt becomes one line on stderr and 2 / 130; otherwise body's return
  value is the status (None counts as 0). Tools end with `sys.exit(main())`, and tests call
  `main(argv)` for the status.
  """
  try:
    status = body(*args, **kwargs)
  except UserError as e:
    report(command, e)
    return EXIT_USER_ERROR
  except KeyboardInterrupt:
    report(command, interrupted_message or "interrupted")
    return EXIT_INTERRUPTED
  return EXIT_OK if status is None else status


class ArgumentParser(argparse.ArgumentParser):
  """argparse for `python -m zsl_jax.tools.<command>`: the module docstring as help, usage mistakes as the one line."""

  def __init__(self, command, description=None, **kwargs):
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    super().__init__(prog=f"python -m zsl_jax.tools.{command}", description=description, **kwargs)
    self.command = command

  def error(self, message):
    fail(self.command, f"{message}; see --help")
