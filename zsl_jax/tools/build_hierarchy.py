"""`python -m zsl_jax.tools.build_hierarchy` (HGR-Net: hierarchy.json and class splits); the code lives in
`zsl_jax.projects.hgr.tools.build_hierarchy`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.hgr.tools.build_hierarchy import main

if __name__ == "__main__":
  sys.exit(main())
