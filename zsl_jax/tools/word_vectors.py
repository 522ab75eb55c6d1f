"""`python -m zsl_jax.tools.word_vectors` (attribute ZSL: attribute word vectors); the code lives in
`zsl_jax.projects.attr.tools.word_vectors`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.attr.tools.word_vectors import main

if __name__ == "__main__":
  sys.exit(main())
