"""DAZLE on the shared engine: data, class universes, sampler, loss, scoring for the evaluator.

`ZSLTrainerBase` holds what DAZLE and VSMR share: loading the benchmark (or generating the demo),
the class universes of model selection (dazle_vsmr.md §9.1) and the resumable samplers. A
universe is the set of classes a model scores: with `zsl.select_on='val'` training uses the
`train` images, the validation classes act as unseen (margin +bias, self-calibration) and the
test-unseen classes never appear; the test universe is all seen + unseen classes.

A `progress` collection mirrors the step inside the model state, so evaluators (which only get
params and model state) know which step they score, also after a resume or in `mode=eval`.
"""
import logging
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax.projects.attr.data import samplers as zsl_batchers
from zsl_jax.projects.attr.data import benchmarks as zsl_benchmarks
from zsl_jax.errors import UserError
from zsl_jax.projects.attr import retrain
from zsl_jax.projects.attr.losses import dazle as dazle_losses
from zsl_jax.projects.attr.models import dazle as dazle_model
from zsl_jax import trainer as base

logger = logging.getLogger(__name__)


def demo_files(data):
  """Generates (once, atomically) and returns the demo benchmark's file paths."""
  from zsl_jax.projects.attr.config import DEMO  # pylint: disable=import-outside-toplevel
  from zsl_jax.projects.attr.data import demo as synthetic_zsl  # pylint: disable=import-outside-toplevel
  name = zsl_benchmarks.check_dataset_name(data.dataset)
  classes, unseen = data.get("demo_classes", DEMO["num_classes"]), data.get("demo_unseen", DEMO["num_unseen"])
  val = data.get("demo_val_classes", DEMO["num_val_classes"])
  attributes = data.get("demo_attributes", DEMO["num_attributes"])
  noise = data.get("demo_noise", 0.1)
  sizes = {**DEMO, "num_classes": classes, "num_unseen": unseen, "num_val_classes": val, "num_attributes": attributes}
  folder = pathlib.Path(os.path.expanduser(data.demo_dir)) / (
      f"{name}_c{classes}u{unseen}v{val}a{attributes}_seed{data.demo_seed}_noise{noise:g}_v1")
  hdf5 = folder / f"feature_map_ResNet_101_{name}.hdf5"
  if not hdf5.exists():
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.")
    synthetic_zsl.make_demo(tmp, name, seed=data.demo_seed, noise=noise, **sizes)
    try:
      os.rename(tmp, folder)
    except OSError:  # Another process finished first: use theirs.
      shutil.rmtree(tmp, ignore_errors=True)
    logger.info("demo data written to %s", folder)
  return {"hdf5": str(hdf5), "att_splits": str(folder / "att_splits.mat")}


def load_dataset(config):
  """ZSLDataset from config.data (demo, root folder or explicit files)."""
  d = config.data
  name = zsl_benchmarks.check_dataset_name(d.dataset)
  files = {"hdf5": d.hdf5, "att_splits": d.att_splits, "res101": d.res101, "w2v": d.w2v}
  if d.demo:
    files.update(demo_files(d))
  elif d.root:
    root = pathlib.Path(os.path.expanduser(d.root))
    if not files["hdf5"]:
      files["hdf5"] = str(root / f"feature_map_ResNet_101_{name}.hdf5")
    if not files["att_splits"] and (root / "att_splits.mat").exists():
      files["att_splits"] = str(root / "att_splits.mat")
  if not files["hdf5"]:
    raise UserError(f"no region features for {name}: pass --config.data.root=<folder with feature_map_ResNet_101_"
                    f"{name}.hdf5> or --config.data.hdf5=<file>, or use the :demo config")
  ds = zsl_benchmarks.load_zsl_dataset(name, **{k: (v or None) for k, v in files.items()}, in_memory=d.in_memory,
                                       val_seed=d.val_seed)
  if ds.w2v is None:
    raise UserError(f"{name}: no attribute word vectors; pass --config.data.w2v=<{name}_attribute.pkl>")
  logger.info("%s", ds.summary())
  return ds


class ZSLTrainerBase(base.Trainer):
  """Data, universes and sampling shared by DAZLE and VSMR."""

  @classmethod
  def check_config(cls, config):
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
    self.dataset = load_dataset(config)
    self.select_on = config.zsl.select_on
    if self.select_on not in ("val", "test_reference", "final"):
      raise UserError(f"zsl.select_on={self.select_on!r}; use 'val', 'test_reference' or 'final'")
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
    return zsl_batchers.train_iterator(self.config.data.sampler, rows, self.dataset.labels[rows],
                                       self.dataset.features, self.train_positions(), self.config.batch_size,
                                       self.config.seed, num_devices=self.mesh.devices.size)

  @staticmethod
  def progress(step):
    return {"progress": {"step": jnp.asarray(step, jnp.int32)}}


class Trainer(ZSLTrainerBase):
  """DAZLE: CE (no margin) + λ·self-calibration on S_pp; scores with the ±bias margin."""

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
    return {"params": params, "constants": variables["constants"], **self.progress(0)}

  def loss(self, variables, batch, rng, step):
    del rng
    out = self.model.apply(variables, batch["features"])
    l = self.config.loss
    total, parts = dazle_losses.dazle_loss(out, batch["label"], self.train_universe["unseen"], lam=l.lam,
                                           loss_type=l.type, ce_over=l.ce_over)
    acc = jnp.mean(jnp.argmax(out["scores"], -1) == batch["label"])
    return total, (self.progress(step + 1), {**parts, "train_acc": acc})

  def eval_scores(self, evaluator, variables, universe):
    att, margin = self.class_inputs(universe)
    fn = lambda g: {"scores": self._scores(variables, g["features"], att, margin)}
    return {"seen": evaluator.map_split(universe["seen_split"], fn),
            "unseen": evaluator.map_split(universe["unseen_split"], fn)}

  def load_init(self, path, abstract_variables):
    """An official DAZLE torch checkpoint (.pt/.pth/.tar) or its import_dazle .npz, with this run's classes."""
    from zsl_jax.projects.attr.tools import import_dazle  # pylint: disable=import-outside-toplevel
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
    return {"params": jax.device_get(imported["params"]), "constants": {"att": att, "margin": margin},
            "progress": {"step": np.int32(0)}}
