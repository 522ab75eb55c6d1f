"""The exceptions that end a run with a message instead of a traceback.

`zsl_jax.main` and the `zsl_jax.tools.*` CLIs catch `UserError` and print its message as a single
line (no traceback), so every message must say what is wrong *and* how to fix it.
"""


class UserError(ValueError):
  """Bad input from the user (path, file format, config value); the message names the fix."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


class Preempted(SystemExit):
  """SIGTERM/SIGINT arrived; a checkpoint was saved and the process exits with 128 + signal."""
