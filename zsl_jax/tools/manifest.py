"""`python -m zsl_jax.tools.manifest` (HGR-Net: ImageNet-21K class counts of the fall-2011 and winter-2021
releases side by side); the code lives in `zsl_jax.projects.hgr.tools.manifest`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.hgr.tools.manifest import main

if __name__ == "__main__":
  sys.exit(main())
