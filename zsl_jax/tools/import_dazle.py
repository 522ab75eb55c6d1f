"""`python -m zsl_jax.tools.import_dazle` (attribute ZSL: official DAZLE checkpoints); the code lives in
`zsl_jax.projects.attr.tools.import_dazle`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.attr.tools.import_dazle import main

if __name__ == "__main__":
  sys.exit(main())
