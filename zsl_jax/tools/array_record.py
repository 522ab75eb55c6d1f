"""`python -m zsl_jax.tools.array_record` (HGR-Net: pack an image index into ArrayRecord files); the code lives in
`zsl_jax.projects.hgr.data.array_record`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.hgr.data.array_record import main

if __name__ == "__main__":
  sys.exit(main())
