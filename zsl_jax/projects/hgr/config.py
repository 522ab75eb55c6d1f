"""The HGR-Net recipe (Yi et al., ECCV 2022; the official README command and `main.py` defaults) as one
function shared by the HGR configs.

`configs/hgr_rn50.py`, `configs/hgr_rn50_lowshot.py` and `configs/clip_rn50_baseline.py` start from
`hgr_config(arg)` and change what their row of the paper's tables needs.
"""
import ml_collections

from zsl_jax import config_lib
from zsl_jax.errors import UserError

EVAL_SETS = {  # name -> (class split of test images / Hit@k candidates, tag)
    "21k_d": "rest",
    "21k_p": "p_rest",
    "2hop": "hop2",
    "3hop": "hop3",
}


def hgr_config(arg=None, **arg_defaults):
  """The paper's zero-shot recipe; `:demo` swaps in the embedded data and a tiny CLIP trained from scratch."""
  a = config_lib.parse_arg(arg, demo=False, eval="21k_d", variant="RN50", **arg_defaults)
  c = config_lib.base_config()
  c.trainer = "hgr"
  c.seed = 0
  c.batch_size = 256               # class-pure: up to 256 images of one class per step
  c.num_epochs = 10.0
  c.data = _data_config(a.demo)
  c.model = ml_collections.ConfigDict(dict(
      name=a.variant,              # CLIP preset, or "custom" with the sizes below
      bn_train=False,              # BatchNorm statistics frozen (torch eval() mode), affine trained
      custom=dict(embed_dim=64, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                  transformer_width=64, transformer_heads=2, transformer_layers=2),
  ))
  c.hgr = _loss_config()
  # AdamW 3e-7 on CLIP with a per-step cosine and clipping at global norm 1.0; SGD 1e-4 on θ.
  c.optim = config_lib.optim_config(
      name="adamw", lr=3e-7, weight_decay=0.0, grad_clip_norm=1.0,
      schedule=dict(type="cosine", warmup_steps=0, end_factor=0.0),
      groups=(("^hgr/level_theta$", dict(name="sgd", lr=1e-4, momentum=0.0, weight_decay=0.0,
                                          grad_clip_norm=0.0, schedule=dict(type="constant"))),))
  c.checkpoint.every_steps = 1000
  c.log.every_steps = 50
  classes = EVAL_SETS.get(a.eval)
  if classes is None:
    raise UserError(f"config argument eval={a.eval!r} is not one of: {', '.join(EVAL_SETS)}")
  c.evals[a.eval] = ml_collections.ConfigDict(dict(
      type="hierarchical", every_steps=0, split="test", classes=classes, all_classes="all",
      batch_size=512, prompt_batch=512, emulate_reference_loader=False, tag=a.eval, at_start=False))
  if a.demo:
    _demo(c, a.eval)
  return c


def _data_config(demo):
  return ml_collections.ConfigDict(dict(
      demo=demo,
      demo_root="~/.cache/zsl_jax/demo/hgr_imagenet21k",
      hierarchy="",                # hierarchy.json from zsl_jax.tools.build_hierarchy
      index="",                    # image index folder from zsl_jax.tools.make_splits
      train_split="train",         # instance split of the training images
      train_classes="train",       # class split whose images train (ILSVRC-1K seen classes)
      model_classes="all",         # class split the `random` sampler draws from
      images="folder",             # folder: files under the index roots | array_record: bytes from packs
      array_record="",             # packs folder from zsl_jax.tools.array_record (images="array_record")
      num_threads=16, prefetch=4, num_workers=0,
  ))


def _loss_config():
  return ml_collections.ConfigDict(dict(
      method="OM",                 # OM (outer x inner loops) | hierarchical (single loop)
      out_ratio=0.25, in_ratio=0.5,  # K and M
      sampler="topk", k=1, num_negatives=256,
      level_weights="adaptive",    # equal increasing decreasing nl_increasing nl_decreasing adaptive
                                   # adaptive_frozen inverse_count
      index_by="depth",            # adaptive θ indexed by depth; "loop_position" = the reference
      weighting="both",            # both | in | out
      theta_scale=1.0,
      template="a photo of a {}.",
  ))


def _demo(c, eval_name):
  """Tiny CLIP from scratch on the embedded 39-class demo (3 subtrees, 18 seen leaves).

  Every ancestor is an outer anchor (K = M = 1) so the unseen upper levels get trained names.
  `random` negatives: with a randomly initialised model, `topk` negatives (always from the levels
  above the anchor, never its own level) are satisfied by a constant image embedding, and the
  image tower collapses; pretrained CLIP (the paper's setting) does not have this issue.
  """
  c.model.name = "custom"
  c.data.num_threads = 4
  c.batch_size = 24
  c.num_epochs = 0.0
  c.total_steps = 600
  c.hgr.out_ratio, c.hgr.in_ratio = 1.0, 1.0
  c.hgr.num_negatives = 16
  c.hgr.sampler = "random"
  c.optim.lr = 3e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = dict(type="cosine", warmup_steps=20, end_factor=0.05)
  c.optim.groups = (("^hgr/level_theta$", dict(name="sgd", lr=1e-2, weight_decay=0.0, grad_clip_norm=0.0,
                                               schedule=dict(type="constant"))),)
  c.checkpoint.every_steps = 200
  c.log.every_steps = 50
  c.evals[eval_name].batch_size = 64
  c.evals[eval_name].at_start = True  # Step-0 row: the untrained model, to compare against.
  c.evals[eval_name].prompt_batch = 64
