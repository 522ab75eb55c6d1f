"""One package per project; the core (everything in zsl_jax outside `projects/` and `tools/`) imports none.

Configs name a trainer or evaluator by dotted module path, or by one of the short names below
(the names of the shipped methods, kept so that `config.json` files of earlier runs still load).
This table holds strings only: importing it imports no project.
"""
TRAINERS = {
    "hgr": "zsl_jax.projects.hgr.trainer",
    "clip_baseline": "zsl_jax.projects.hgr.clip_baseline",
    "dazle": "zsl_jax.projects.attr.trainers.dazle",
    "vsmr": "zsl_jax.projects.attr.trainers.vsmr",
}
EVALUATORS = {
    "hierarchical": "zsl_jax.projects.hgr.evaluator",
    "gzsl": "zsl_jax.projects.attr.evaluator",
}
