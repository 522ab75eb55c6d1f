"""`python -m zsl_jax.tools.zsl_demo` (attribute ZSL: write the generated demo benchmark); the code lives in
`zsl_jax.projects.attr.data.demo`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.attr.data.demo import main

if __name__ == "__main__":
  sys.exit(main())
