r"""CLIP RN50 baselines for HGR-Net's tables: flat fine-tuning, and zero-shot OpenAI CLIP.

Fine-tune with flat cross-entropy over the seen classes (demo: embedded data, tiny CLIP, CPU):
  python -m zsl_jax.main --config=configs/clip_rn50_baseline.py:demo --workdir=/tmp/clip_demo
  python -m zsl_jax.main --config=configs/clip_rn50_baseline.py --workdir=runs/clip_ft \
      --config.data.hierarchy=data/hierarchy/hierarchy.json --config.data.index=data/index \
      --config.init.checkpoint=weights/RN50

Zero-shot row (unmodified OpenAI RN50 converted with zsl_jax.tools.convert_clip, same evaluator):
  python -m zsl_jax.main --config=configs/clip_rn50_baseline.py:eval=in21k_d --workdir=runs/clip_zs \
      --config.mode=eval --config.init.checkpoint=weights/RN50 --config.data.hierarchy=... --config.data.index=...
"""
from zsl_jax.projects.hgr import config as hgr_config


def get_config(arg=None):
  return hgr_config.to_baseline(hgr_config.hgr_config(arg))
