"""The HGR-Net recipe (Yi et al., ECCV 2022; the official README command and `main.py` defaults) as one
function shared by the HGR configs.

`configs/hgr_rn50.py`, `configs/hgr_rn50_lowshot.py` and `configs/clip_rn50_baseline.py` start from
`hgr_config(arg)` and change what their row of the paper's tables needs.
"""
import ml_collections

from zsl_jax import config_lib
from zsl_jax.errors import UserError

EVAL_SETS = {  # evaluator name (config.evals key, metrics split, plot tag) -> class split of test images
    "in21k_d": "rest",    # ImageNet-21K-D
    "in21k_p": "p_rest",  # ImageNet-21K-P
    "hop2": "hop2",
    "hop3": "hop3",
}
# Names before issue 16 (not Python names, so `--config.evals.21k_d.x=...` could not parse). Still accepted by
# `:eval=`, and records written under them count as the new name's (`LEGACY_EVAL_NAMES`, the evaluator's
# `legacy_names`).
LEGACY_EVAL_NAMES = {"21k_d": "in21k_d", "21k_p": "in21k_p", "2hop": "hop2", "3hop": "hop3"}


def former_names(name):
  """The names an evaluator called `name` had before (("21k_d",) for "in21k_d")."""
  return tuple(old for old, new in LEGACY_EVAL_NAMES.items() if new == name)


def eval_name(name):
  """The evaluator name of a `:eval=` argument (old names map to the new ones); UserError for unknown names."""
  name = LEGACY_EVAL_NAMES.get(name, name)
  if name not in EVAL_SETS:
    raise UserError(f"config argument eval={name!r} is not one of: {', '.join(EVAL_SETS)}")
  return name


def hgr_config(arg=None, **arg_defaults):
  """The paper's zero-shot recipe; `:demo` swaps in the embedded data and a tiny CLIP trained from scratch."""
  a = config_lib.parse_arg(arg, demo=False, eval="in21k_d", variant="RN50", **arg_defaults)
  name = eval_name(a.eval)
  c = config_lib.base_config()
  c.trainer = "hgr"
  c.seed = 0
  c.batch_size = 256               # class-pure: up to 256 images of one class per step
  c.num_epochs = 10.0
  c.data = _data_config(a.demo)
  c.model = ml_collections.ConfigDict(dict(
      name=a.variant,              # CLIP preset, or "custom" with the sizes below
      bn_train=False,              # BatchNorm statistics frozen (torch eval() mode), affine trained
      # What the towers' blocks keep for the backward pass: none | blocks | dots_saveable (recompute the
      # rest). The text tower already runs chunk by chunk (one chunk's activations at a time); with
      # these defaults the sampler's largest step fits 80 GB per device (benchmarks/hgr_aot.py).
      remat_text="none", remat_image="none",
      conv_impl="auto",            # ResNet convolutions: auto (im2col matmuls on CPU, XLA's elsewhere) | xla | matmul
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
  c.evals[name] = ml_collections.ConfigDict(dict(
      type="hierarchical", every_steps=0, split="test", classes=EVAL_SETS[name], all_classes="all",
      batch_size=512, prompt_batch=512, emulate_reference_loader=False, tag=name, at_start=False,
      variant="plain",             # one or more of eval_suite.variants.VARIANTS, comma-separated (checked there)
      mta_cuts=25, mta_seed=0))    # MTA: random tree cuts averaged, and their seed (eval_suite.consistency)
  if a.demo:
    _demo(c, name)
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
      num_threads=0, prefetch=0,   # decode threads and batches read ahead; 0: from the cores (2 x threads)
      num_workers=0,               # grain worker processes (0: threads in the main process)
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
      prompt_chunk_rows=0,         # packed prompt rows per text-tower chunk, a multiple of the devices; 0: automatic
      classes_per_step=1,          # class-pure slots per batch (batch_size / this images each); 1: the reference
      negatives_from="all",        # all (the reference: unseen names too) | train_tree (training classes + ancestors)
  ))


def _demo(c, eval_name):
  """Tiny CLIP from scratch on the embedded 39-class demo (3 subtrees, 18 seen leaves), then the baseline.

  The demo's prompts name the images' visual factors (`data/demo.py`), so unseen classes can be
  recognised zero-shot. Every ancestor is an outer anchor (K = M = 1) so the unseen upper levels
  get trained names. Negatives: `near_simi` with a pool that fits `num_negatives` (every node within
  one level of the contrast's level, except the anchor's path and children: no ranking, so no
  pretrained tower is needed). It never makes an ancestor of the anchor a negative: `brothers` and
  `random` do, which orders leaf > parent > root for every image and left TOR at 0 (measured), and
  `topk` never contrasts the anchor's own level. Negatives come from the training classes' tree
  only (`negatives_from="train_tree"`), so that, like the flat baseline, HGR-Net never names an
  unseen leaf in training; the reference's "all" made the unseen leaves' names negatives of their
  seen siblings' images, and no unseen leaf image was then ranked first at its level (measured).
  Twelve class-pure slots of 2 images per step (`classes_per_step`): on one-class steps, a model
  trained from scratch only learns the colour (measured: the flat baseline too). Level weights
  `adaptive_frozen` (θ at its init, as the released code effectively runs): learning θ by SGD on
  this loss put 0.99998 of the weight on the easiest contrast (the top level) within 600 steps, and
  the text tower then kept only the colour word. `compare_baseline`: after HGR-Net, the flat CLIP
  baseline trains on the same data and a table compares them (`demo_compare`).
  """
  c.model.name = "custom"
  c.model.custom.image_resolution = 32
  c.data.num_threads = 4
  c.data.num_workers = 1  # decode in a worker process: the loop no longer waits on the GIL (data wait 5 % -> 2-3 %)
  c.batch_size = 24
  c.num_epochs = 0.0
  c.total_steps = 600
  c.hgr.out_ratio, c.hgr.in_ratio = 1.0, 1.0
  c.hgr.num_negatives = 64
  c.hgr.sampler = "near_simi"
  c.hgr.negatives_from = "train_tree"
  c.hgr.classes_per_step = 12
  c.hgr.level_weights = "adaptive_frozen"
  c.hgr.prompt_chunk_rows = 8  # all 39 prompts in one chunk (8 rows of 64 tokens): one text-tower call per step
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = dict(type="cosine", warmup_steps=50, end_factor=0.05)
  c.checkpoint.every_steps = 200
  c.log.every_steps = 50
  c.evals[eval_name].batch_size = 64
  c.evals[eval_name].at_start = True  # Step-0 row: the untrained model, to compare against.
  c.evals[eval_name].prompt_batch = 64
  c.compare_baseline = True  # then the flat CLIP baseline into <workdir>/baseline (demo_compare)


def to_baseline(c):
  """Turns an HGR-Net config into the flat CLIP baseline's (configs/clip_rn50_baseline.py; demo_compare).

  Same data, model, seed and evaluators; flat cross-entropy over the seen classes on shuffled
  batches with the reference baseline's optimizer, or the demo's tuned one.
  """
  c.trainer = "clip_baseline"
  c.batch_size = 64                 # shuffled batches (the reference baseline's clip_train.py)
  c.optim = config_lib.optim_config(name="adamw", lr=3e-7, weight_decay=1e-4, grad_clip_norm=0.0,
                                     schedule=dict(type="constant"))
  if c.data.demo:
    c.batch_size = 24  # total_steps stays the HGR-Net run's (600 in the demo, or the user's override)
    c.optim.lr = 1e-3
    c.optim.schedule = dict(type="cosine", warmup_steps=50, end_factor=0.05)
    c.compare_baseline = False
  return c
