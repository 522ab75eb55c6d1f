"""DAZLE / VSMR recipes: the official notebooks' and scripts' hyperparameters, and clear errors."""
import importlib

import pytest

from zsl_jax.errors import UserError


def _config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name,sampler,momentum,normalize_v,beta_off,epochs", [
    ("dazle_awa2", "balanced", 0.0, True, False, 20),
    ("dazle_cub", "uniform", 0.9, False, False, 20),
    ("dazle_sun", "balanced", 0.9, False, True, 100),
])
def test_dazle_recipes(name, sampler, momentum, normalize_v, beta_off, epochs):
  c = _config(name)
  assert c.trainer == "dazle" and c.seed == 214 and c.batch_size == 50 and c.num_epochs == epochs
  assert (c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.momentum) == ("rmsprop", 1e-4, 1e-4, momentum)
  assert (c.optim.rms_decay, c.optim.eps) == (0.99, 1e-8)
  assert c.data.sampler == sampler and c.model.normalize_V == normalize_v and c.model.uniform_att_2 == beta_off
  assert c.model.normalize_F and c.model.is_bias and c.model.bias == 1.0 and c.model.trainable_w2v
  assert (c.loss.lam, c.loss.type, c.loss.ce_over) == (0.1, "CE", "all")
  assert c.zsl.select_on == "val" and c.evals.gzsl.type == "gzsl"
  demo = _config(name, "demo")
  assert demo.data.demo and demo.data.in_memory and demo.batch_size % 8 == 0


@pytest.mark.parametrize("name", ["vsmr_awa2", "vsmr_cub", "vsmr_sun"])
def test_vsmr_recipes(name):
  c = _config(name)
  assert c.trainer == "vsmr" and c.data.sampler == "balanced" and c.batch_size == 2000
  assert (c.loss.ps, c.loss.pp, c.loss.ap, c.loss.ed) == (1.0, 1.0, 0.1, 1.0)
  assert c.vsmr.transductive_refine is False and c.vsmr.test_masks == "predicted"
  groups = dict(c.optim.groups)
  assert groups["^(encoder|decoder)/"]["name"] == "adam"
  if name == "vsmr_awa2":
    assert (c.total_steps, c.optim.momentum, c.model.hidden, c.vsmr.top_k) == (470, 0.0, 1850, 30)
  assert _config(name, "demo").data.demo


def test_unknown_config_argument():
  with pytest.raises(UserError, match="unknown config argument"):
    _config("dazle_awa2", "demoo")
