"""DAZLE forward and loss vs a torch reference written after the official `core/DAZLE.py` (random weights).

The reference below follows its equations with the official parameter names (V, W_1, W_2,
W_3, att, mask_bias, bias), so its state_dict has the official checkpoint layout and goes through
`from_torch_state_dict` unchanged. W_2 and W_3 are non-zero so attention is not uniform.
"""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from zsl_jax.projects.attr.losses import dazle as dazle_loss
from zsl_jax.projects.attr.models import dazle

B, R, F, D, NA, K = 6, 9, 32, 20, 11, 8
SEEN, UNSEEN = np.array([0, 2, 3, 5, 6, 7]), np.array([1, 4])


class TorchDAZLE(torch.nn.Module):
  """Parameters, forward and losses of the official model in torch, float64, official names and flags."""

  def __init__(self, w2v, att, seen, unseen, normalize_V, normalize_F, is_bias, uniform_att_1=False,
               uniform_att_2=False, is_sigmoid=False, non_linear_act=False, lam=0.1, conservative=True, feature_dim=F):
    super().__init__()
    g = torch.Generator().manual_seed(1)
    D, F, K = w2v.shape[1], feature_dim, att.shape[0]  # pylint: disable=invalid-name,redefined-outer-name
    self.V = torch.nn.Parameter(TF.normalize(torch.tensor(w2v)))
    self.W_1 = torch.nn.Parameter(torch.randn(D, F, generator=g, dtype=torch.float64))
    self.W_2 = torch.nn.Parameter(torch.randn(D, F, generator=g, dtype=torch.float64) * 0.3)
    self.W_3 = torch.nn.Parameter(torch.randn(D, F, generator=g, dtype=torch.float64) * 0.3)
    self.att = torch.nn.Parameter(TF.normalize(torch.tensor(att)), requires_grad=False)
    mask = torch.ones(1, K, dtype=torch.float64)
    mask[:, seen] *= -1
    self.mask_bias = torch.nn.Parameter(mask, requires_grad=False)
    self.bias = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64), requires_grad=False)
    self.seen, self.unseen = torch.tensor(seen), torch.tensor(unseen)
    self.flags = dict(normalize_V=normalize_V, normalize_F=normalize_F, is_bias=is_bias, uniform_att_1=uniform_att_1,
                      uniform_att_2=uniform_att_2, is_sigmoid=is_sigmoid, non_linear_act=non_linear_act)
    self.lam, self.conservative = lam, conservative

  def forward(self, fmap):  # fmap [B, F, h, w] as the official loaders give it
    f = self.flags
    Fs = fmap.reshape(fmap.shape[0], fmap.shape[1], -1)  # [B, F, R]
    Vn = TF.normalize(self.V) if f["normalize_V"] else self.V
    if f["normalize_F"]:
      Fs = TF.normalize(Fs, dim=1)
    S = torch.einsum("iv,vf,bfr->bir", Vn, self.W_1, Fs)
    if f["is_sigmoid"]:
      S = torch.sigmoid(S)
    A = TF.softmax(torch.einsum("iv,vf,bfr->bir", Vn, self.W_2, Fs), dim=-1)
    Fp = torch.einsum("bir,bfr->bif", A, Fs)
    pool = torch.full_like(A, 1.0 / A.shape[-1]) if f["uniform_att_1"] else A
    Sp = torch.einsum("bir,bir->bi", pool, S)
    if f["non_linear_act"]:
      Sp = TF.relu(Sp)
    Ap = torch.sigmoid(torch.einsum("iv,vf,bif->bi", Vn, self.W_3, Fp))
    w = torch.ones_like(Ap) if f["uniform_att_2"] else Ap
    Spp = torch.einsum("ki,bi,bi->bk", self.att, w, Sp)
    if f["is_bias"]:
      Spp = Spp + self.mask_bias * self.bias
    return {"S_pp": Spp, "A": A, "A_p": Ap}

  def loss(self, out, labels, kind="CE"):
    Spp = out["S_pp"]
    onehot = TF.one_hot(labels, Spp.shape[1]).double()
    if kind == "CE":
      s = Spp - self.mask_bias * self.bias if self.flags["is_bias"] else Spp
      if not self.conservative:
        s, onehot = s[:, self.seen], onehot[:, self.seen]
      main = torch.mean(-(TF.log_softmax(s, dim=-1) * onehot).sum(-1))
    else:
      s_c = Spp.gather(1, labels.view(-1, 1))
      s_all = Spp if self.conservative else Spp[:, self.seen]
      main = torch.clamp(1 - (s_c - s_all), min=0).mean()
    mass = TF.softmax(Spp, dim=-1)[:, self.unseen].sum(1)
    return main + self.lam * -torch.log(mass.mean())


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  fmap = np.abs(rng.standard_normal((B, F, 3, 3)))
  w2v = rng.standard_normal((NA, D))
  att = np.abs(rng.standard_normal((K, NA)))
  labels = rng.choice(SEEN, B)
  return fmap, w2v, att, labels


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


CASES = [dict(normalize_V=nv, normalize_F=nf, is_bias=bias)
         for nv, nf, bias in itertools.product([True, False], repeat=3)]
CASES += [dict(normalize_V=True, normalize_F=True, is_bias=True, uniform_att_2=True),
          dict(normalize_V=False, normalize_F=True, is_bias=True, uniform_att_1=True),
          dict(normalize_V=True, normalize_F=True, is_bias=True, is_sigmoid=True),
          dict(normalize_V=False, normalize_F=True, is_bias=True, non_linear_act=True)]


@pytest.mark.parametrize("flags", CASES, ids=lambda f: ",".join(k for k, v in f.items() if v) or "plain")
def test_forward_and_loss_match_torch(data, flags):
  fmap, w2v, att, labels = data
  ref = TorchDAZLE(w2v, att, SEEN, UNSEEN, **flags)
  out_t = ref(torch.tensor(fmap))
  module, variables = dazle.from_torch_state_dict(ref.state_dict(), seen_classes=SEEN, unseen_classes=UNSEEN, **flags)
  feats = np.ascontiguousarray(fmap.reshape(B, F, -1).transpose(0, 2, 1)).astype(np.float32)  # [B, R, F]
  out = module.apply(variables, feats)
  assert _rel(out["scores"], out_t["S_pp"].detach()) < 1e-5
  assert _rel(out["attention"], out_t["A"].detach()) < 1e-5
  assert _rel(out["attribute_attention"], out_t["A_p"].detach()) < 1e-5
  assert np.abs(np.asarray(out["attention"]) - 1.0 / R).max() > 1e-3  # non-uniform: W_2 really used
  unseen = np.isin(np.arange(K), UNSEEN)
  for kind, over in (("CE", "all"), ("CE", "seen"), ("rank", "all")):
    ref.conservative = over == "all"
    lt = ref.loss(out_t, torch.tensor(labels), kind).item()
    lj, _ = dazle_loss.dazle_loss(out, labels, unseen, lam=0.1, loss_type=kind, ce_over=over)
    assert _rel(lj, lt) < 1e-5, (kind, over, float(lj), lt)


def test_zero_init_gives_uniform_attention(data):
  """Official init (W_2 = W_3 = 0): α = 1/R and β = 0.5 everywhere."""
  import jax  # pylint: disable=import-outside-toplevel
  fmap, _, att, _ = data
  feats = fmap.reshape(B, F, -1).transpose(0, 2, 1).astype(np.float32)
  model = dazle.DAZLE(num_attributes=NA, feature_dim=F, w2v_dim=D)
  a, m = dazle.universe_inputs(att, np.arange(K), UNSEEN)
  variables = model.init(jax.random.PRNGKey(0), feats, a, m)
  out = model.apply(variables, feats)
  np.testing.assert_allclose(out["attention"], 1.0 / R, rtol=1e-6)
  np.testing.assert_allclose(out["attribute_attention"], 0.5, rtol=1e-6)
  assert out["scores"].shape == (B, K)


def test_mask_bias_mismatch_is_user_error(data):
  from zsl_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  _, w2v, att, _ = data
  ref = TorchDAZLE(w2v, att, SEEN, UNSEEN, True, True, True)
  with pytest.raises(UserError, match="mask_bias"):
    dazle.from_torch_state_dict(ref.state_dict(), seen_classes=UNSEEN, unseen_classes=SEEN)
