"""VSMR parts: prototype losses vs a torch reference after VSMR's `compute_total_loss`, masked attention,
transductive refinement."""
import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from zsl_jax.projects.attr.losses import vsmr as vsmr_losses
from zsl_jax.projects.attr.models import vsmr as vsmr_model
from zsl_jax.projects.attr.trainers.vsmr import refine_prototypes


def _torch_losses(f, labels):
  """L_PS and L_PP with torch.unique (sorted) batch classes and cosine similarities."""
  classes = torch.unique(labels)
  protos = torch.stack([f[labels == c].mean(0) for c in classes])
  fn, pn = TF.normalize(f, dim=1), TF.normalize(protos, dim=1)
  c = fn @ pn.T
  own = c[torch.arange(len(labels)), torch.searchsorted(classes, labels)].sum()
  l_ps = (c.sum() - own) / own
  p = pn @ pn.T
  l_pp = (p.sum() - torch.trace(p)) / (2 * len(classes))
  return l_ps, l_pp


def test_prototype_losses_match_torch_and_ignore_absent_classes():
  rng = np.random.default_rng(0)
  f = np.abs(rng.standard_normal((12, 7)))
  labels = np.array([0, 3, 3, 5, 0, 5, 5, 3, 0, 0, 5, 3])  # classes 1, 2, 4 of K = 6 absent
  l_ps, l_pp, _, present = vsmr_losses.prototype_losses(f.astype(np.float32), labels, 6)
  t_ps, t_pp = _torch_losses(torch.tensor(f), torch.tensor(labels))
  assert float(l_ps) == pytest.approx(t_ps.item(), rel=1e-5)
  assert float(l_pp) == pytest.approx(t_pp.item(), rel=1e-5)
  np.testing.assert_array_equal(present, [1, 0, 0, 1, 0, 1])
  g = jax.grad(lambda x: sum(vsmr_losses.prototype_losses(x, labels, 6)[:2]))(f.astype(np.float32))
  assert np.isfinite(g).all()  # absent (zero) prototypes do not poison the gradient


def test_masked_attention_zeroes_absent_attributes():
  rng = np.random.default_rng(1)
  x = np.abs(rng.standard_normal((3, 9, 16))).astype(np.float32)
  mask = rng.random((3, 5)) < 0.5
  mask[:, 0] = True
  m = vsmr_model.MaskedAttention(num_attributes=5, feature_dim=16, w2v_dim=8)
  v = m.init(jax.random.PRNGKey(0), x, mask)
  out = m.apply(v, x, mask)
  att = np.asarray(out["attention"])
  np.testing.assert_allclose(att.sum(-1), mask.astype(np.float32), atol=1e-6)  # rows sum to 1 or 0
  assert np.all(np.asarray(out["attribute_attention"])[~mask] < 1e-30)
  # The image vector only depends on present attributes: perturbing V of an absent one changes nothing.
  absent = int(np.flatnonzero(~mask[0])[0]) if (~mask[0]).any() else None
  if absent is not None:
    v2 = jax.tree_util.tree_map(np.array, v)
    v2["params"]["V"][absent] += 5.0
    np.testing.assert_allclose(m.apply(v2, x, mask)["embedding"][0], out["embedding"][0], rtol=1e-6)
  xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
  h = np.einsum("bir,brf->bif", att, xn)
  np.testing.assert_allclose(out["embedding"], np.einsum("bi,bif->bf", out["attribute_attention"], h), rtol=1e-5)


def test_transductive_refinement_hand_example():
  protos = np.array([[1.0, 0.0], [0.0, 1.0]])
  queries = np.array([[0.9, 0.1], [0.8, 0.0], [0.1, 1.0], [0.0, 0.7], [0.2, 0.9]])
  out = refine_prototypes(protos, queries, 2)
  np.testing.assert_allclose(out[0], (protos[0] + queries[0] + queries[1]) / 3)
  np.testing.assert_allclose(out[1], (protos[1] + queries[2] + queries[3]) / 3)


def test_semantic_losses_match_torch_mse():
  """L_AP over the batch's classes and L_ED over seen classes; `normalize_targets` regresses
  prototypes rescaled to unit RMS per dimension, the reference regresses raw ones."""
  rng = np.random.default_rng(3)
  k, i, f = 6, 5, 16
  encoded, targets = rng.standard_normal((k, f)), np.abs(rng.standard_normal((k, f))) * 0.02
  reconstructed, att = rng.standard_normal((k, i)), rng.random((k, i))
  present = np.array([1, 1, 0, 1, 0, 1], bool)
  seen = np.array([1, 1, 1, 1, 0, 0], bool)
  t = {n: torch.tensor(v) for n, v in dict(e=encoded, p=targets, r=reconstructed, a=att).items()}
  mp, ms = torch.tensor(present), torch.tensor(seen)
  scaled = t["p"] / t["p"].square().mean(1, keepdim=True).sqrt()
  for normalize, target in ((False, t["p"]), (True, scaled)):
    l_ap, l_ed = vsmr_losses.semantic_losses(encoded, reconstructed, att, targets, present, seen, normalize)
    np.testing.assert_allclose(float(l_ap), float(TF.mse_loss(t["e"][mp], target[mp])), rtol=1e-5)
    np.testing.assert_allclose(float(l_ed), float(TF.mse_loss(t["r"][ms], t["a"][ms])), rtol=1e-5)
