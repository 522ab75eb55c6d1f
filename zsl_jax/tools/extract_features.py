"""`python -m zsl_jax.tools.extract_features` (attribute ZSL: ResNet-101 region features); the code lives in
`zsl_jax.projects.attr.tools.extract_features`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.attr.tools.extract_features import main

if __name__ == "__main__":
  sys.exit(main())
