"""`python -m zsl_jax.tools.make_splits` (HGR-Net: the ImageNet-21K image index); the code lives in
`zsl_jax.projects.hgr.tools.make_splits`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.hgr.tools.make_splits import main

if __name__ == "__main__":
  sys.exit(main())
