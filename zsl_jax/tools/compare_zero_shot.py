"""`python -m zsl_jax.tools.compare_zero_shot` (HGR-Net: every zero-shot inference variant of a CLIP, and
optionally a fine-tuned run, on one test protocol, as one table); the code lives in
`zsl_jax.projects.hgr.eval_suite.compare`.

`zsl_jax.tools` is the command layer: one short module per user command, above the core and the
projects, so the commands stay the same wherever their code lives.
"""
import sys

from zsl_jax.projects.hgr.eval_suite.compare import main

if __name__ == "__main__":
  sys.exit(main())
