"""VSMR's `model.classifier_pool` run through the engine on the AWA2 demo (issue 15).

The recipe pools the attribute classifier's regions by mean (torchvision's avgpool); the demos
use max. On the engine pipeline's first batch and the same initial weights, the switch changes the
attribute BCE as its formula says and nothing else; a short `mean` run trains and is evaluated.
"""
import importlib

import jax
import numpy as np
import pytest

from zsl_jax import engine as engine_lib
from zsl_jax import metrics
from zsl_jax import sharding
from zsl_jax.data import device_prefetch

STEPS = 3


def vsmr_config(data_dir, pool):
  c = importlib.import_module("configs.vsmr_awa2").get_config("demo")
  c.data.demo_dir = str(data_dir)
  c.model.classifier_pool = pool
  c.total_steps = STEPS
  c.checkpoint.every_steps = STEPS
  c.log.progress = False
  c.log.tensorboard = False
  for ev in c.evals.values():
    ev.every_steps = 0
  return c


def engine(config, workdir):
  """An engine on one device (the sharded paths have their own tests)."""
  return engine_lib.Engine(config, workdir, mesh=sharding.make_mesh(dict(data=1, fsdp=1), jax.devices()[:1]))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("vsmr_switch_data")


def _step0(config, workdir):
  """(Trainer.loss's terms, host batch, variables, trainer) of the initial weights on the pipeline's first batch."""
  eng = engine(config, workdir)
  state = eng.build_state(with_optimizer=False)
  variables = {"params": state["params"], **state["model_state"]}
  it = device_prefetch.prefetch(eng.trainer.train_iterator(), eng.mesh)
  try:
    batch = next(it)
  finally:
    getattr(it, "close", lambda: None)()
  total, (_, terms) = jax.jit(lambda v, b: eng.trainer.loss(v, b, None, 0))(variables, batch)
  return {"loss": float(total), **{k: float(v) for k, v in terms.items()}}, jax.device_get(batch), variables, eng


def _bce(logits, targets):
  return np.mean(np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits))))


def test_classifier_pool_changes_the_attribute_bce_as_its_formula_says(data_dir, tmp_path):
  terms = {}
  for pool in ("mean", "max"):
    terms[pool], batch, variables, eng = _step0(vsmr_config(data_dir, pool), tmp_path / pool)
    dense = jax.device_get(variables["params"]["attr_classifier"])
    x = np.asarray(batch["features"], np.float64)                                 # [B, R, F]
    pooled = x.mean(1) if pool == "mean" else x.max(1)                            # [B, F]
    logits = pooled @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"], np.float64)
    targets = np.asarray(jax.device_get(eng.trainer._train_mask))[batch["label"]]  # pylint: disable=protected-access
    np.testing.assert_allclose(terms[pool]["loss_bce"], _bce(logits, targets), rtol=1e-4)
  assert abs(terms["mean"]["loss_bce"] - terms["max"]["loss_bce"]) > 1e-3
  for key in ("loss_ps", "loss_pp", "loss_ap", "loss_ed"):  # the pool feeds the attribute classifier only
    assert terms["mean"][key] == pytest.approx(terms["max"][key], rel=1e-6), key


def test_mean_pool_run_trains_and_evaluates(data_dir, tmp_path):
  engine(vsmr_config(data_dir, "mean"), tmp_path).train()
  train = metrics.read_metrics(tmp_path, split="train")
  assert train[-1]["step"] == STEPS and np.isfinite(train[-1]["loss"])
  [record] = metrics.read_metrics(tmp_path, split="gzsl")
  assert record["step"] == STEPS and 0 <= record["zsl_acc"] <= 1 and 0 <= record["attr_f1"] <= 1
