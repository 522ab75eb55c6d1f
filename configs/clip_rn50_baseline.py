r"""CLIP RN50 baselines for HGR-Net's tables: flat fine-tuning, and zero-shot OpenAI CLIP.

Fine-tune with flat cross-entropy over the seen classes (demo: embedded data, tiny CLIP, CPU):
  python -m zsl_jax.main --config=configs/clip_rn50_baseline.py:demo --workdir=/tmp/clip_demo
  python -m zsl_jax.main --config=configs/clip_rn50_baseline.py --workdir=runs/clip_ft \
      --config.data.hierarchy=data/hierarchy/hierarchy.json --config.data.index=data/index \
      --config.init.checkpoint=weights/RN50

Zero-shot row (unmodified OpenAI RN50 converted with zsl_jax.tools.convert_clip, same evaluator):
  python -m zsl_jax.main --config=configs/clip_rn50_baseline.py:eval=21k_d --workdir=runs/clip_zs \
      --config.mode=eval --config.init.checkpoint=weights/RN50 --config.data.hierarchy=... --config.data.index=...
"""
from zsl_jax import config_lib
from zsl_jax.projects.hgr import config as hgr_rn50


def get_config(arg=None):
  c = hgr_rn50.hgr_config(arg)
  demo = c.data.demo
  c.trainer = "clip_baseline"
  c.batch_size = 64                 # shuffled batches (the reference baseline's clip_train.py)
  c.optim = config_lib.optim_config(name="adamw", lr=3e-7, weight_decay=1e-4, grad_clip_norm=0.0,
                                     schedule=dict(type="constant"))
  if demo:
    c.batch_size = 24
    c.total_steps = 300
    c.optim.lr = 3e-3
    c.optim.schedule = dict(type="cosine", warmup_steps=20, end_factor=0.05)
  return c
