"""`python -m zsl_jax.tools.convert_features` (attribute ZSL: a DAZLE hdf5 to a memory-mappable `.npy`); the code
lives in `zsl_jax.projects.attr.tools.convert_features`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.attr.tools.convert_features import main

if __name__ == "__main__":
  sys.exit(main())
