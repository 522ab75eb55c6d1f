"""DAZLE forward, loss and gradients vs a torch reference written after the official `core/DAZLE.py`.

The reference below follows its equations with the official parameter names (V, W_1, W_2,
W_3, att, mask_bias, bias), so its state_dict has the official checkpoint layout and goes through
`from_torch_state_dict` unchanged. W_2 and W_3 are non-zero so attention is not uniform. zsl_jax
contracts in another order than the official code (one GEMM of region scores, queries or regions
projected first by cost): the gradient checks cover both orders, and VSMR's use of the same core.
"""
import itertools

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from zsl_jax.projects.attr.losses import dazle as dazle_loss
from zsl_jax.projects.attr.models import attention
from zsl_jax.projects.attr.models import dazle
from zsl_jax.projects.attr.models import vsmr

B, R, F, D, NA, K = 6, 9, 32, 20, 11, 8
SEEN, UNSEEN = np.array([0, 2, 3, 5, 6, 7]), np.array([1, 4])
NA_WIDE = 128  # attributes for which the regions are projected to D first at these shapes
ORDERS = pytest.mark.parametrize("na", [NA, NA_WIDE], ids=["queries_first", "regions_first"])


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


def _problem(na, seed=2):
  """(fmap [B, F, 3, 3], w2v [na, D], att [K, na], labels [B]) with `na` attributes."""
  rng = np.random.default_rng(seed)
  assert attention.queries_first(B * R, na, D, F) == (na == NA)  # each order really runs
  return (np.abs(rng.standard_normal((B, F, 3, 3))), rng.standard_normal((na, D)),
          np.abs(rng.standard_normal((K, na))), rng.choice(SEEN, B))


def _regions(fmap):
  return np.ascontiguousarray(fmap.reshape(B, F, -1).transpose(0, 2, 1)).astype(np.float32)  # [B, R, F]


GRAD_CASES = [dict(normalize_V=True, normalize_F=True, is_bias=True),  # the AWA2 recipe
              dict(normalize_V=False, normalize_F=True, is_bias=True, uniform_att_2=True),  # SUN
              dict(normalize_V=False, normalize_F=False, is_bias=True, is_sigmoid=True, uniform_att_1=True)]


@ORDERS
@pytest.mark.parametrize("flags", GRAD_CASES, ids=lambda f: ",".join(k for k, v in f.items() if v))
def test_gradients_match_torch(na, flags):
  """The training step's gradients (CE + self-calibration) equal the official model's, in both orders."""
  fmap, w2v, att, labels = _problem(na)
  ref = TorchDAZLE(w2v, att, SEEN, UNSEEN, **flags)
  loss_t = ref.loss(ref(torch.tensor(fmap)), torch.tensor(labels))
  loss_t.backward()
  module, variables = dazle.from_torch_state_dict(ref.state_dict(), seen_classes=SEEN, unseen_classes=UNSEEN, **flags)
  unseen = np.isin(np.arange(K), UNSEEN)

  def loss_fn(params):
    return dazle_loss.dazle_loss(module.apply({**variables, "params": params}, _regions(fmap)), labels, unseen)[0]

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
  assert _rel(loss, loss_t.item()) < 1e-5
  for name in ("V", "W_1", "W_2", "W_3"):
    want = getattr(ref, name).grad
    if want is None:  # W_3 with β ≡ 1: unused, zero gradient on both sides
      assert not np.any(np.asarray(grads[name])), name
    else:
      assert _rel(grads[name], want) < 1e-5, name


def _torch_masked_attention(V, W2, W3, fmap, mask):
  """VSMR's visual branch in the official DAZLE notation (explicit mask, as zsl_jax documents), float64."""
  Fs = TF.normalize(fmap.reshape(B, F, -1), dim=1)  # [B, F, R]
  Vn = TF.normalize(V)
  A = torch.where(mask[:, :, None], torch.einsum("iv,vf,bfr->bir", Vn, W2, Fs), attention.ABSENT_LOGIT)
  A = TF.softmax(A, dim=-1) * mask[:, :, None]
  Fp = torch.einsum("bir,bfr->bif", A, Fs)
  w = torch.sigmoid(torch.where(mask, torch.einsum("iv,vf,bif->bi", Vn, W3, Fp), attention.ABSENT_LOGIT))
  return torch.einsum("bi,bif->bf", w, Fp), A, w


@ORDERS
def test_vsmr_masked_attention_matches_reference_formulation(na):
  """VSMR shares the core: image vectors, maps, weights and their gradients, in both orders."""
  fmap, _, _, _ = _problem(na)
  rng = np.random.default_rng(3)
  mask = rng.random((B, na)) < 0.5
  probe = rng.standard_normal((B, F))  # loss = Σ f · probe
  module = vsmr.MaskedAttention(num_attributes=na, feature_dim=F, w2v_dim=D)
  variables = module.init(jax.random.PRNGKey(0), _regions(fmap), mask)

  def loss_fn(params):
    out = module.apply({"params": params}, _regions(fmap), mask)
    return (out["embedding"] * probe).sum(), out

  grads, out = jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])
  p = {k: torch.tensor(np.asarray(v, np.float64), requires_grad=True) for k, v in variables["params"].items()}
  f, A, w = _torch_masked_attention(p["V"], p["W_2"], p["W_3"], torch.tensor(fmap), torch.tensor(mask))
  (f * torch.tensor(probe)).sum().backward()
  assert _rel(out["embedding"], f.detach()) < 1e-5
  assert _rel(out["attention"], A.detach()) < 1e-5
  assert _rel(out["attribute_attention"], w.detach()) < 1e-5
  for name in ("V", "W_2", "W_3"):
    assert _rel(grads[name], p[name].grad) < 1e-5, name


def test_zero_init_gives_uniform_attention(data):
  """Official init (W_2 = W_3 = 0): α = 1/R and β = 0.5 everywhere."""
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
