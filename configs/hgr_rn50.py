r"""HGR-Net on CLIP RN50 (Yi et al., ECCV 2022): the paper's zero-shot recipe on ImageNet-21K.

Demo (embedded generated data, tiny CLIP trained from scratch, CPU, a few minutes):
  python -m zsl_jax.main --config=configs/hgr_rn50.py:demo --workdir=/tmp/hgr_demo

Paper recipe (OpenAI RN50 weights converted once with zsl_jax.tools.convert_clip; hierarchy and
index from zsl_jax.tools.build_hierarchy / make_splits):
  python -m zsl_jax.main --config=configs/hgr_rn50.py --workdir=runs/hgr_rn50 \
      --config.data.hierarchy=data/hierarchy/hierarchy.json --config.data.index=data/index \
      --config.init.checkpoint=weights/RN50

Evaluate a run (or an official HGR-Net `clip_<epoch>` file via init.checkpoint) on another test set:
  python -m zsl_jax.main --config=configs/hgr_rn50.py:eval=in21k_p --workdir=runs/hgr_eval \
      --config.mode=eval --config.init.checkpoint=runs/hgr_rn50 --config.data.hierarchy=... --config.data.index=...

Arguments (comma-separated after the colon): demo; eval=in21k_d|in21k_p|hop2|hop3 (which evaluator
the run declares; default in21k_d; the former names 21k_d|21k_p|2hop|3hop still work);
variant=RN50|RN101|RN50x4|RN50x16|ViT-B/32|ViT-B/16.
"""
from zsl_jax.projects.hgr.config import hgr_config


def get_config(arg=None):
  return hgr_config(arg)
