"""`python -m zsl_jax.tools.attention_maps` (attribute ZSL: attention-map overlays); the code lives in
`zsl_jax.projects.attr.tools.attention_maps`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.attr.tools.attention_maps import main

if __name__ == "__main__":
  sys.exit(main())
