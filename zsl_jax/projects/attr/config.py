"""Config pieces shared by the DAZLE and VSMR recipes (configs/dazle_*.py, configs/vsmr_*.py).

Real data: `--config.data.root=DIR` with DAZLE's `feature_map_ResNet_101_<DS>.hdf5` (it holds
labels, split locs, att and w2v_att) and optionally xlsa17's `att_splits.mat` (for train_loc /
val_loc); or name each file with data.hdf5 / data.att_splits / data.res101 / data.w2v. `:demo`
generates a small benchmark in the real file formats into data.demo_dir on first use.
"""
import ml_collections
from ml_collections import config_dict

from zsl_jax import config_lib

# Demo sizes: 20 classes (15 seen, 5 unseen, 3 of the seen as validation classes), 24 attributes,
# 30 images per class of 49 regions x 64 features (zsl_jax.projects.attr.data.demo.make_demo defaults).
DEMO = dict(num_classes=20, num_unseen=5, num_val_classes=3, num_attributes=24, feature_dim=64,
            images_per_class=30)


def data_config(dataset, demo=False):
  return ml_collections.ConfigDict(dict(
      dataset=dataset,
      root="",                # folder with feature_map_ResNet_101_<DS>.hdf5 [+ att_splits.mat]
      hdf5="", att_splits="", res101="", w2v="",  # explicit files (override root)
      # Region features: None = in host memory when they fit memory_budget x MemAvailable (AWA2 ~15 GB),
      # else chunk-aware reads through a block cache of that budget; True / False force one of them.
      in_memory=True if demo else config_dict.placeholder(bool),
      memory_budget=0.5,      # share of available memory features may fill per process (> 1: bytes)
      features_npy="",        # convert_features output (memory-mapped); default: <hdf5 stem>.npy when present
      window_rows=4096,       # sampler=window: rows per shuffling window (whole chunk blocks)
      clip_negative_att=dataset == "AWA2",  # the reference AWA2 loader zeroes negative attributes
      sampler="balanced",     # balanced | uniform (the official notebooks' two) | window (chunk-friendly epochs)
      val_seed=0,             # seeded parts of the validation split
      demo=bool(demo),
      demo_dir="~/.cache/zsl_jax/demo",
      demo_seed=0,
      demo_noise=0.1,         # background noise of the generated region features
      demo_classes=DEMO["num_classes"], demo_unseen=DEMO["num_unseen"], demo_val_classes=DEMO["num_val_classes"],
      demo_attributes=DEMO["num_attributes"],
  ))


def zsl_config(select_on="val"):
  return ml_collections.ConfigDict(dict(
      select_on=select_on,    # val | test_reference (the notebooks' protocol, test-selected) | final
      retrain_on_trainval=False,  # with select_on=val: then train on trainval for the selected
                                  # iteration count and test once, in <workdir>/retrain_trainval
      iterations_from="",     # set by that retrain: the validation run its iteration count comes from
  ))


def base(trainer, dataset, demo):
  c = config_lib.base_config()
  c.trainer = trainer
  c.seed = 214  # the reference notebooks' seed
  c.data = data_config(dataset, demo)
  c.zsl = zsl_config()
  c.compute_dtype = "float32"
  c.log.every_steps = 50
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 0  # keep all: `--config.init.step=<selected_step>` re-evaluates the selected one
  return c


def gzsl_eval(every_steps, batch_size=128, **kwargs):
  return ml_collections.ConfigDict(dict(type="gzsl", every_steps=every_steps, batch_size=batch_size,
                                       also_per_sample=False,  # + per-sample accuracies (VSMR's scripts)
                                       **kwargs))


def rmsprop(momentum, weight_decay=1e-4, lr=1e-4, **overrides):
  """PyTorch RMSprop (alpha 0.99, eps 1e-8 outside the sqrt, coupled L2) as in every notebook."""
  return config_lib.optim_config(name="rmsprop", lr=lr, weight_decay=weight_decay, momentum=momentum,
                                  rms_decay=0.99, eps=1e-8, **overrides)


# The official DAZLE notebooks' per-dataset settings: sampler, epochs, normalize_V, β off,
# RMSprop momentum, and the evaluation interval (= one epoch of the trainval split).
DAZLE_RECIPES = {
    "AWA2": dict(sampler="balanced", epochs=20, normalize_V=True, uniform_att_2=False, momentum=0.0, eval_every=470),
    "CUB": dict(sampler="uniform", epochs=20, normalize_V=False, uniform_att_2=False, momentum=0.9, eval_every=141),
    "SUN": dict(sampler="balanced", epochs=100, normalize_V=False, uniform_att_2=True, momentum=0.9, eval_every=206),
}


def dazle_model_config(**overrides):
  c = ml_collections.ConfigDict(dict(
      normalize_V=False, normalize_F=True,
      is_bias=True, bias=1.0,        # ±bias calibration margin (+ unseen, - seen) in training and test
      uniform_att_1=False,           # ablation: uniform attention over regions
      uniform_att_2=False,           # ablation / SUN recipe: no attention over attributes (β ≡ 1)
      is_sigmoid=False, non_linear_act=False,
      trainable_w2v=True,
  ))
  c.update(overrides)
  return c


def dazle_config(dataset, demo):
  """DAZLE recipe for AWA2 / CUB / SUN; `demo` swaps in generated data and a 1-minute schedule."""
  r = DAZLE_RECIPES[dataset]
  c = base("dazle", dataset, demo)
  c.data.sampler = r["sampler"]
  c.batch_size = 50  # the notebooks' batch_size argument (balanced AWA2 yields 40 images: 40 classes x 1)
  c.num_epochs = float(r["epochs"])
  c.model = dazle_model_config(normalize_V=r["normalize_V"], uniform_att_2=r["uniform_att_2"])
  c.loss = ml_collections.ConfigDict(dict(lam=0.1, type="CE", ce_over="all"))  # CE | rank; all | seen
  c.optim = rmsprop(momentum=r["momentum"])
  c.evals.gzsl = gzsl_eval(every_steps=r["eval_every"], batch_size=100)
  if demo:
    # Balanced: 12 train classes x 10 (select_on=val) or 15 seen classes x 8 (test_reference), both
    # divisible by 8 devices; lr 1e-3 so ~110 steps suffice.
    c.batch_size = 120
    c.num_epochs = 60.0
    c.optim.lr = 1e-3
    c.evals.gzsl = gzsl_eval(every_steps=10, batch_size=64)
    c.checkpoint.every_steps = 50
    c.log.every_steps = 10
    c.log.progress = False
  return c


# VSMR (its code release): AWA2 from AWA2_ours.py; CUB from CUB50_ours.py (a 50-class subset
# in the reference; here the full PS split); SUN has no reference script: AWA2's settings with
# CUB's encoder size and top-k (our choice).
VSMR_RECIPES = {
    "AWA2": dict(steps=470, momentum=0.0, normalize_V=True, trainable_w2v=True, hidden=1850, top_k=30,
                 classifier_lr=1e-3, classifier_momentum=0.9, ed_lr=1e-3),
    "CUB": dict(steps=40, momentum=0.9, normalize_V=False, trainable_w2v=False, hidden=1024, top_k=10,
                classifier_lr=1e-5, classifier_momentum=0.9, ed_lr=8e-4),
    "SUN": dict(steps=470, momentum=0.0, normalize_V=True, trainable_w2v=True, hidden=1024, top_k=10,
                classifier_lr=1e-3, classifier_momentum=0.9, ed_lr=1e-3),
}


def vsmr_config(dataset, demo):
  r = VSMR_RECIPES[dataset]
  c = base("vsmr", dataset, demo)
  c.data.sampler = "balanced"
  c.batch_size = 2000  # balanced: 40 AWA2 classes x 50 images
  c.total_steps = r["steps"]
  c.model = ml_collections.ConfigDict(dict(hidden=r["hidden"], normalize_V=r["normalize_V"], normalize_F=True,
                                           trainable_w2v=r["trainable_w2v"],
                                           classifier_pool="mean"))  # mean | max over regions
  c.loss = ml_collections.ConfigDict(dict(ps=1.0, pp=1.0, ap=0.1, ed=1.0, bce=1.0,
                                          normalize_targets=True))  # False: the reference's MSE on raw prototypes
  c.vsmr = ml_collections.ConfigDict(dict(
      transductive_refine=False, top_k=r["top_k"],
      test_masks="predicted",  # predicted (the method) | oracle (true class masks: a diagnostic upper bound)
  ))
  # Visual branch: RMSprop 1e-4 (wd 1e-4); attribute classifier: RMSprop with its own lr; semantic
  # autoencoder: Adam without weight decay.
  c.optim = rmsprop(momentum=r["momentum"], groups=(
      ("^attr_classifier/", dict(lr=r["classifier_lr"], momentum=r["classifier_momentum"])),
      ("^(encoder|decoder)/", dict(name="adam", lr=r["ed_lr"], weight_decay=0.0)),
  ))
  # Cosines to class means and to E(a) are on unrelated scales, so H at γ = 0 is near 0 and ranks
  # checkpoints by noise: select on the best H of the calibration curve instead (README, VSMR).
  c.evals.gzsl = gzsl_eval(every_steps=max(r["steps"] // 10, 1), batch_size=256, select_calibrated=True)
  c.checkpoint.every_steps = max(r["steps"] // 10, 1)
  if demo:
    # VSMR recognises unseen classes through E(a), a regression from class attributes to visual
    # prototypes fitted on the training classes alone: it needs more training classes than
    # attributes (the shared demo has 12 for 24 attributes, and E(a) then varies with the seed from
    # chance to 0.6). This demo: 40 classes (10 unseen, 6 of the seen as validation classes, so 24
    # training classes) with 12 attributes; cleaner features (noise 0.02); a max-pooled attribute
    # classifier (the demo's attributes sit in 1-2 of 49 regions, which average pooling dilutes
    # below the noise); lr 1e-2, since VSMR's metric losses learn far more slowly than DAZLE's
    # cross-entropy.
    c.data.update(demo_noise=0.02, demo_classes=40, demo_unseen=10, demo_val_classes=6, demo_attributes=12)
    c.model.classifier_pool = "max"
    c.batch_size = 120  # balanced: 24 x 5 (select_on=val) or 30 x 4 (test_reference)
    c.total_steps = 1000
    c.optim.lr = 1e-2 * (1.0 - r["momentum"])  # same effective step with the recipe's momentum
    if r["momentum"]:
      # CUB (momentum 0.9, frozen V): the coupled L2 term outweighs the tiny metric-loss gradients in
      # RMSprop's normalised step and shrinks W_2/W_3 until attention is uniform on the demo data.
      c.optim.weight_decay = 0.0
    c.optim.groups = (("^attr_classifier/", dict(lr=1e-2, momentum=0.9)),
                      ("^(encoder|decoder)/", dict(name="adam", lr=3e-3, weight_decay=0.0)))
    c.evals.gzsl = gzsl_eval(every_steps=100, batch_size=64, select_calibrated=True)
    c.checkpoint.every_steps = 500
    c.log.every_steps = 50
    c.log.progress = False
  return c
