"""optax-from-config equals PyTorch's optimizers step by step (the recipes were tuned in torch)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax import config_lib
from zsl_jax import optim
from zsl_jax.errors import UserError

torch = pytest.importorskip("torch")

STEPS = 6


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"visual": {"kernel": rng.normal(size=(5, 3)).astype(np.float32),
                       "bias": rng.normal(size=(3,)).astype(np.float32)},
            "theta": rng.normal(size=(4,)).astype(np.float32)}
  targets = [{k: (rng.normal(size=v.shape).astype(np.float32) if not isinstance(v, dict) else
                  {kk: rng.normal(size=vv.shape).astype(np.float32) for kk, vv in v.items()})
              for k, v in params.items()} for _ in range(STEPS)]
  return params, targets


def _loss_jax(p, t):
  # A different quadratic bowl at every step, so moments and momentum matter.
  return sum(jnp.sum((a - b) ** 2 * (1.0 + i)) for i, (a, b) in enumerate(zip(jax.tree.leaves(p), jax.tree.leaves(t))))


def _run_jax(config, params, targets):
  tx, _ = optim.make(config, total_steps=STEPS)
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  for t in targets:
    g = jax.grad(_loss_jax)(p, t)
    upd, state = tx.update(g, state, p)
    p = jax.tree.map(lambda a, u: a + u, p, upd)
  return jax.tree.map(np.asarray, p)


def _run_torch(make_opt, params, targets, clip=None, lr_lambda=None):
  leaves, treedef = jax.tree.flatten(params)
  tensors = [torch.tensor(x, requires_grad=True) for x in leaves]
  opt = make_opt(tensors)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda) if lr_lambda else None
  for t in targets:
    opt.zero_grad()
    loss = sum(((a - torch.tensor(b)) ** 2 * (1.0 + i)).sum()
               for i, (a, b) in enumerate(zip(tensors, jax.tree.leaves(t))))
    loss.backward()
    if clip:
      for group_tensors, norm in clip:
        torch.nn.utils.clip_grad_norm_([tensors[i] for i in group_tensors], norm)
    opt.step()
    if sched:
      sched.step()
  return jax.tree.unflatten(treedef, [x.detach().numpy() for x in tensors])


def _assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


def test_adamw_with_warmup_cosine_and_clipping_matches_torch():
  params, targets = _problem()
  cfg = config_lib.optim_config(name="adamw", lr=0.1, weight_decay=0.2, grad_clip_norm=1.0,
                                 schedule=dict(type="cosine", warmup_steps=2))
  warm, total = 2, STEPS
  lam = lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
  ref = _run_torch(lambda ts: torch.optim.AdamW(ts, lr=0.1, weight_decay=0.2, eps=1e-8), params, targets,
                   clip=[(list(range(3)), 1.0)], lr_lambda=lam)
  _assert_close(_run_jax(cfg, params, targets), ref)


def test_rmsprop_matches_torch_rmsprop_with_momentum_and_weight_decay():
  params, targets = _problem(1)
  cfg = config_lib.optim_config(name="rmsprop", lr=1e-2, weight_decay=1e-2, momentum=0.9, rms_decay=0.99)
  ref = _run_torch(lambda ts: torch.optim.RMSprop(ts, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=1e-2,
                                                  momentum=0.9), params, targets)
  _assert_close(_run_jax(cfg, params, targets), ref)


def test_sgd_nesterov_matches_torch():
  params, targets = _problem(2)
  cfg = config_lib.optim_config(name="sgd", lr=1e-2, weight_decay=1e-3, momentum=0.9, nesterov=True)
  ref = _run_torch(lambda ts: torch.optim.SGD(ts, lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
                   params, targets)
  _assert_close(_run_jax(cfg, params, targets), ref)


def test_param_groups_different_optimizer_and_freeze():
  """HGR-Net shape: AdamW on the backbone, SGD on level weights; here also one frozen tensor."""
  params, targets = _problem(3)
  cfg = config_lib.optim_config(
      name="adamw", lr=1e-2, weight_decay=0.1, grad_clip_norm=0.5,
      groups=(("^theta$", dict(name="sgd", lr=0.05, weight_decay=0.0, grad_clip_norm=0.0)),
              ("visual/bias", None)))
  out = _run_jax(cfg, params, targets)
  np.testing.assert_array_equal(out["visual"]["bias"], params["visual"]["bias"])
  # Leaves in jax order: theta, visual/bias, visual/kernel -> indices 0, 1, 2.
  def make(ts):
    return torch.optim.AdamW([ts[2]], lr=1e-2, weight_decay=0.1), torch.optim.SGD([ts[0]], lr=0.05)

  class Both:
    def __init__(self, ts):
      self.a, self.b = make(ts)
    def zero_grad(self):
      self.a.zero_grad()
      self.b.zero_grad()
    def step(self):
      self.a.step()
      self.b.step()

  ref = _run_torch(Both, params, targets, clip=[([2], 0.5)])
  np.testing.assert_allclose(out["theta"], ref["theta"], rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(out["visual"]["kernel"], ref["visual"]["kernel"], rtol=2e-5, atol=2e-6)


def test_bad_optimizer_settings_are_named():
  with pytest.raises(UserError, match="optim.name='adagrad'"):
    optim.make(config_lib.optim_config(name="adagrad"), 10)
  with pytest.raises(UserError, match="'lrate' is unknown"):
    optim.make(config_lib.optim_config(groups=(("x", dict(lrate=1.0)),)), 10)
  with pytest.raises(UserError, match="schedule type 'exp'"):
    optim.make(config_lib.optim_config(schedule=dict(type="exp", warmup_steps=0, end_factor=0.0)), 10)


def test_accumulated_grads_match_torch_without_zero_grad():
  """Reference quirk switch: torch never calling zero_grad() with in-place clipping, then AdamW."""
  params, targets = _problem(4)
  cfg = config_lib.optim_config(name="adamw", lr=0.05, weight_decay=0.0, grad_clip_norm=1.0, accumulate_grads=True)

  class NoZeroGrad:
    def __init__(self, ts):
      self.opt = torch.optim.AdamW(ts, lr=0.05, weight_decay=0.0)
    def zero_grad(self):
      pass  # The quirk: .grad keeps the clipped running sum.
    def step(self):
      self.opt.step()

  ref = _run_torch(NoZeroGrad, params, targets, clip=[(list(range(3)), 1.0)])
  _assert_close(_run_jax(cfg, params, targets), ref)


def test_fp16_rounding_drops_updates_below_float16_spacing():
  cfg = config_lib.optim_config(name="sgd", lr=1e-6, fp16_round="clip")
  tx, _ = optim.make(cfg, 10)
  p = {"visual": {"conv1": {"kernel": jnp.array([0.5, 2.0 ** -14], jnp.float32)}},
       "ln_final": {"scale": jnp.array([0.5], jnp.float32)}}
  state = tx.init(p)
  upd, _ = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
  new = jax.tree.map(lambda a, b: np.asarray(a + b), p, upd)
  assert new["visual"]["conv1"]["kernel"][0] == 0.5          # 1e-6 < fp16 spacing at 0.5: lost
  assert new["visual"]["conv1"]["kernel"][1] < 2.0 ** -14    # tiny weight: the update survives
  assert new["ln_final"]["scale"][0] == np.float32(0.5) - np.float32(1e-6)  # fp32-resident: exact
