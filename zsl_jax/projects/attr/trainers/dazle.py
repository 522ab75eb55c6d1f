"""DAZLE on the shared engine: data, class universes, sampler, loss, scoring for the evaluator.

`ZSLTrainerBase` holds what DAZLE and VSMR share: loading the benchmark (or generating the demo),
the class universes of model selection and the resumable samplers. A universe is the set of classes
a model scores: with `zsl.select_on='val'` training uses the `train` images, the validation classes
act as unseen (margin +bias, self-calibration) and the test-unseen classes never appear; the test
universe is all seen + unseen classes.

`eval_offer()` hands the gzsl evaluator the universes and the method's scoring function; the
evaluator gets the step it scores from the engine, so nothing about it lives in the model state.
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax import config_lib
from zsl_jax import trainer as base
from zsl_jax.data import pipeline
from zsl_jax.data import sampling
from zsl_jax.errors import UserError
from zsl_jax.projects.attr import retrain
from zsl_jax.projects.attr.data import loading
from zsl_jax.projects.attr.data import samplers as zsl_batchers
from zsl_jax.projects.attr.data import xlsa17
from zsl_jax.projects.attr.losses import dazle as dazle_losses
from zsl_jax.projects.attr.models import dazle as dazle_model
from zsl_jax.projects.attr.tools import import_dazle

logger = logging.getLogger(__name__)

# zsl.select_on: the classes model selection scores (decides the training split and universes below)
SELECT_ON = ("val", "test_reference", "final")


class ZSLTrainerBase(base.Trainer):
  """Data, universes and sampling shared by DAZLE and VSMR."""

  @classmethod
  def check_config(cls, config):
    """The switches DAZLE and VSMR share (data, model selection, retraining) and the engine's."""
    super().check_config(config)
    config_lib.check_choices(config, {"data.sampler": zsl_batchers.KINDS, "zsl.select_on": SELECT_ON})
    config_lib.check_choice(config, "data.dataset", xlsa17.DATASETS, normalize=str.upper)
    retrain.check(config)

  @classmethod
  def next_run(cls, config, workdir):
    """With zsl.retrain_on_trainval: the trainval run for the iteration count selected on validation."""
    if not retrain.requested(config):
      return None
    step = retrain.selected_step(config, workdir)
    logger.info("zsl_jax: retraining on trainval for the %d iterations selected on validation, in %s", step,
                workdir / retrain.SUBDIR)
    return retrain.retrain_config(config, step, workdir), workdir / retrain.SUBDIR

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    self.dataset = loading.load_dataset(config)
    self.select_on = config.zsl.select_on
    att = np.asarray(self.dataset.att, np.float64)
    if config.data.clip_negative_att:
      att = np.maximum(att, 0.0)
    self.att = (att / np.maximum(np.linalg.norm(att, axis=1, keepdims=True), 1e-12)).astype(np.float32)  # [K, I]
    self.train_split = "train" if self.select_on == "val" else "trainval"
    self.train_universe = self.universe("val" if self.select_on == "val" else "test")
    logger.info("training on split %r (%d images): %d classes, %d of them as unseen; model selection: %s",
                self.train_split, len(self.dataset.split(self.train_split)), len(self.train_universe["classes"]),
                int(self.train_universe["unseen"].sum()), self.select_on)

  def universe(self, kind):
    """{'classes' ids, 'unseen' mask, 'seen_split', 'unseen_split', 'proto_split'} of 'val' or 'test'."""
    ds = self.dataset
    if kind == "val":
      seen_ids = np.unique(ds.labels[ds.train])
      unseen_ids = np.asarray(ds.val_classes)
      splits = ("val_seen", "val_unseen", "train")
    elif kind == "test":
      seen_ids, unseen_ids = ds.seen_classes, ds.unseen_classes
      splits = ("test_seen", "test_unseen", "train" if self.select_on == "val" else "trainval")
    else:
      raise ValueError(kind)
    classes = np.union1d(seen_ids, unseen_ids)
    return {"classes": classes, "unseen": np.isin(classes, unseen_ids), "unseen_ids": unseen_ids,
            "seen_split": splits[0], "unseen_split": splits[1], "proto_split": splits[2]}

  def train_positions(self):
    position = np.full(self.dataset.num_classes, -1, np.int64)
    position[self.train_universe["classes"]] = np.arange(len(self.train_universe["classes"]))
    return position

  def steps_per_epoch(self):
    """The reference's epoch: training images / the batch-size argument (not the effective batch)."""
    return len(self.dataset.split(self.train_split)) / self.config.batch_size

  def train_iterator(self):
    rows = self.dataset.split(self.train_split)
    d = self.config.data
    sampler = zsl_batchers.make_sampler(d.sampler, rows, self.dataset.labels[rows], self.config.batch_size,
                                        self.config.seed, num_devices=self.mesh.devices.size,
                                        block_rows=getattr(self.dataset.features, "block_rows", 1),
                                        window_rows=d.get("window_rows", zsl_batchers.WINDOW_ROWS))
    # Read-ahead from the core count: grain's default reads ~500 batches ahead (8 GB for AWA2's DAZLE).
    return sampling.iterator(sampler, zsl_batchers.LoadFeatures(self.dataset.features, self.train_positions()),
                             num_threads=pipeline.AUTO, prefetch=pipeline.AUTO)

  def eval_offer(self):
    """For the gzsl evaluator: class universes, the method's scoring and the selection protocol."""
    return {"universe": self.universe, "scores": self.eval_scores, "num_classes": self.dataset.num_classes,
            "select_on": self.select_on, "iterations_from": self.config.zsl.get("iterations_from", ""),
            "title": f"{self.dataset.name} {self.config.trainer}"}

  def eval_scores(self, variables, universe, map_batches):
    """{"seen", "unseen": {"scores" [n, K_u], "label" [n]} or None, "info": {...}} of one universe.

    `map_batches(source, fn)` is the evaluator's loop: jitted `fn(global batch) -> {name: [b, ...]}`
    over a random-access source, back as host arrays of every example (with its `label`).
    """
    raise NotImplementedError


class Trainer(ZSLTrainerBase):
  """DAZLE: CE (no margin) + λ·self-calibration on S_pp; scores with the ±bias margin."""

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    config_lib.check_choices(config, {"loss.type": dazle_losses.LOSS_TYPES, "loss.ce_over": dazle_losses.CE_OVER})

  def __init__(self, config, mesh):
    super().__init__(config, mesh)
    m = config.model
    self.model = dazle_model.DAZLE(
        num_attributes=self.dataset.num_attributes, feature_dim=self.dataset.features.feature_dim,
        w2v_dim=self.dataset.w2v.shape[1], normalize_V=m.normalize_V, normalize_F=m.normalize_F,
        is_bias=m.is_bias, uniform_att_1=m.uniform_att_1, uniform_att_2=m.uniform_att_2, is_sigmoid=m.is_sigmoid,
        non_linear_act=m.non_linear_act, trainable_w2v=m.trainable_w2v)
    self._scores = jax.jit(lambda v, x, a, mg: self.model.apply(v, x, a, mg)["scores"])

  def class_inputs(self, universe):
    return dazle_model.universe_inputs(self.att, universe["classes"], universe["unseen_ids"], self.config.model.bias)

  def init_variables(self, rng):
    att, margin = self.class_inputs(self.train_universe)
    f = self.dataset.features
    variables = self.model.init(rng, jnp.zeros((1, f.num_regions, f.feature_dim)), att, margin)
    w2v = np.asarray(self.dataset.w2v, np.float64)
    v0 = w2v / np.maximum(np.linalg.norm(w2v, axis=1, keepdims=True), 1e-12)  # official init: normalised rows
    params = {**variables["params"], "V": jnp.asarray(v0, jnp.float32)}
    return {"params": params, "constants": variables["constants"]}

  def loss(self, variables, batch, rng, step):
    del rng
    out = self.model.apply(variables, batch["features"])
    loss_cfg = self.config.loss
    total, parts = dazle_losses.dazle_loss(out, batch["label"], self.train_universe["unseen"], lam=loss_cfg.lam,
                                           loss_type=loss_cfg.type, ce_over=loss_cfg.ce_over)
    acc = jnp.mean(jnp.argmax(out["scores"], -1) == batch["label"])
    return total, ({}, {**parts, "train_acc": acc})

  def eval_scores(self, variables, universe, map_batches):
    att, margin = self.class_inputs(universe)
    fn = lambda g: {"scores": self._scores(variables, g["features"], att, margin)}
    source = self.dataset.source
    return {"seen": map_batches(source(universe["seen_split"]), fn),
            "unseen": map_batches(source(universe["unseen_split"]), fn)}

  def load_init(self, path, abstract_variables):
    """An official DAZLE torch checkpoint (.pt/.pth/.tar) or its import_dazle .npz, with this run's classes."""
    if not str(path).endswith((".pt", ".pth", ".tar", ".npz")):
      return None
    sd = import_dazle.read_torch_state_dict(path)
    m = self.config.model
    _, imported = dazle_model.from_torch_state_dict(
        sd, seen_classes=self.dataset.seen_classes, unseen_classes=self.dataset.unseen_classes,
        att=None if "att" in sd else self.att, bias=m.bias)
    shapes = {k: v.shape for k, v in abstract_variables["params"].items()}
    got = {k: tuple(v.shape) for k, v in imported["params"].items()}
    if got != {k: tuple(s) for k, s in shapes.items()}:
      raise UserError(f"{path}: parameter shapes {got} do not match this dataset's model {shapes}")
    if not np.allclose(np.asarray(imported["constants"]["att"]), self.att, atol=1e-4):
      logger.warning("%s: the checkpoint's class attributes differ from this dataset's; using the dataset's", path)
    att, margin = self.class_inputs(self.train_universe)
    return {"params": jax.device_get(imported["params"]), "constants": {"att": att, "margin": margin}}
