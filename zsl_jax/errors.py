"""One exception type for bad user input.

`zsl_jax.main` and the `zsl_jax.tools.*` CLIs catch `UserError` and print its message as a single
line (no traceback), so every message must say what is wrong *and* how to fix it.
"""


class UserError(ValueError):
  """Bad input from the user (path, file format, config value); the message names the fix."""
