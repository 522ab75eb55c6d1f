"""The batched HGR-Net loss equals the reference's per-contrast loop (torch, after the official `tree_model.py`).

Same image features, prompt features and sampled negatives on both sides; loss and gradients
(image features, prompt features, logit scale, adaptive θ) must agree to 1e-5 relative.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax.errors import UserError
from zsl_jax.projects.hgr import loss as hgr
from zsl_jax.projects.hgr import negatives as hgr_negatives

torch = pytest.importorskip("torch")


def _random_tree(num_nodes=60, seed=0):
  """A random rooted forest: node i > roots picks a parent among earlier nodes (depth <= 6)."""
  rng = np.random.default_rng(seed)
  parent = [-1, -1, -1]
  depth = [0, 0, 0]
  for i in range(3, num_nodes):
    choices = [j for j in range(i) if depth[j] < 6]
    p = int(rng.choice(choices))
    parent.append(p)
    depth.append(depth[p] + 1)
  max_len = max(depth) + 1
  paths = np.full((num_nodes, max_len), -1, np.int32)
  for i in range(num_nodes):
    chain, j = [], i
    while j >= 0:
      chain.append(j)
      j = parent[j]
    paths[i, :len(chain)] = chain[::-1]
  children = [np.array([j for j in range(num_nodes) if parent[j] == i], np.int32) for i in range(num_nodes)]
  return paths, np.array(depth, np.int32), children, np.array([0, 1, 2], np.int32)


def _torch_weights(scheme, depths_of_positions, theta, counts):
  n = len(depths_of_positions)
  i = torch.arange(n, dtype=torch.float64)
  if scheme == "equal":
    return torch.full((n,), 1.0 / n, dtype=torch.float64)
  if scheme == "increasing":
    return (i + 1) / (i + 1).sum()
  if scheme == "decreasing":
    return (n - i) / (n - i).sum()
  if scheme == "nl_increasing":
    return (i + 1) ** 3 / ((i + 1) ** 3).sum()
  if scheme == "nl_decreasing":
    return (n - i) ** 3 / ((n - i) ** 3).sum()
  if scheme in ("adaptive", "adaptive_frozen"):
    th = theta if scheme == "adaptive" else theta.detach()
    return torch.softmax(100.0 ** th[list(depths_of_positions)], 0)
  if scheme == "inverse_count":
    inv = 1.0 / torch.tensor([counts[d] for d in depths_of_positions], dtype=torch.float64)
    return inv / inv.sum()
  raise ValueError(scheme)


def _torch_reference(sampler, label, negatives, feats, text, logit_scale, theta, scheme, counts):
  """The official OM loop: outer anchors fine->coarse, inner levels, positive = outer anchor."""
  f = torch.nn.functional.normalize(feats, dim=-1)
  path_y = sampler.path(label)
  outer = list(path_y[::-1][:max(1, math.ceil(sampler.out_ratio * len(path_y)))])
  w_out = _torch_weights(scheme, [len(sampler.path(a)) - 1 for a in outer], theta, counts)
  total = 0.0
  for k, a in enumerate(outer):
    path_a = sampler.path(a)
    inner = list(path_a[::-1][:max(1, math.ceil(sampler.in_ratio * len(path_a)))])
    w_in = _torch_weights(scheme, [len(path_a) - 1 - m for m in range(len(inner))], theta, counts)
    for m, _ in enumerate(inner):
      cols = list(negatives[(k, m)]) + [a]  # The reference appends the positive last.
      t = torch.nn.functional.normalize(text[cols], dim=-1)
      z = logit_scale.exp() * f @ t.T
      target = torch.full((f.shape[0],), len(cols) - 1, dtype=torch.long)
      total = total + w_out[k] * w_in[m] * torch.nn.functional.cross_entropy(z, target)
  return total


def _jax_loss(contrasts, feats, text, logit_scale, theta, scheme, counts):
  unique, columns, _ = hgr_negatives.dedupe_prompts(contrasts.node_ids)
  return _jitted_loss(vars(contrasts), unique, columns, feats, text, logit_scale, theta, counts, scheme)


@jax.jit(static_argnames="scheme")
def _jitted_loss(contrasts, unique, columns, feats, text, logit_scale, theta, counts, scheme):
  img = feats / jnp.linalg.norm(feats, axis=-1, keepdims=True)
  txt = text[unique]
  txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
  w = hgr.contrast_weights(scheme, contrasts, theta, counts)
  return hgr.om_loss(img, txt, columns, w, logit_scale)[0]


@pytest.mark.parametrize("ratios", [(0.25, 0.5), (1.0, 1.0)])
@pytest.mark.parametrize("scheme", hgr.SCHEMES)
def test_batched_loss_and_grads_match_reference_loop(ratios, scheme):
  paths, depth, children, roots = _random_tree()
  sampler = hgr_negatives.ContrastSampler(paths, depth, children, roots, out_ratio=ratios[0], in_ratio=ratios[1],
                                num_negatives=12)
  label = int(np.argmax(depth))  # A deep class: several anchors and levels.
  contrasts = sampler.sample(label, np.random.default_rng(7))
  negatives = {(int(k), int(m)): [int(x) for x in row[1:] if x >= 0]
               for k, m, row, ok in zip(contrasts.k_index, contrasts.m_index, contrasts.node_ids,
                                        contrasts.group_mask) if ok}
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(6, 16))
  text = rng.normal(size=(len(depth), 16))
  counts = np.bincount(depth, minlength=paths.shape[1]).astype(np.float64)
  theta = hgr.init_theta(counts) + rng.normal(size=len(counts)) * 0.05  # Non-uniform weights.
  logit_scale = np.log(20.0)

  tf, tt = torch.tensor(feats, requires_grad=True), torch.tensor(text, requires_grad=True)
  tls = torch.tensor(logit_scale, requires_grad=True)
  tth = torch.tensor(np.asarray(theta, np.float64), requires_grad=True)
  ref = _torch_reference(sampler, label, negatives, tf, tt, tls, tth, scheme, counts)
  ref.backward()

  with jax.enable_x64(True):
    loss, grads = jax.value_and_grad(_jax_loss, argnums=(1, 2, 3, 4))(
        contrasts, jnp.asarray(feats), jnp.asarray(text), jnp.asarray(logit_scale),
        jnp.asarray(theta, jnp.float64), scheme, counts)
  assert len(negatives) == int(contrasts.group_mask.sum()) > 1
  np.testing.assert_allclose(float(loss), ref.item(), rtol=1e-5)
  for got, want in zip(grads, (tf.grad, tt.grad, tls.grad, tth.grad)):
    want = np.zeros_like(np.asarray(got)) if want is None else want.numpy()
    # Relative to the gradient's scale, so near-zero entries do not need 1e-5 of themselves.
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max() + 1e-12)


def test_fp32_batched_loss_matches_float64():
  paths, depth, children, roots = _random_tree()
  sampler = hgr_negatives.ContrastSampler(paths, depth, children, roots, num_negatives=12)
  contrasts = sampler.sample(int(np.argmax(depth)), np.random.default_rng(0))
  rng = np.random.default_rng(2)
  feats, text = rng.normal(size=(6, 16)), rng.normal(size=(len(depth), 16))
  counts = np.bincount(depth).astype(np.float64)
  theta = hgr.init_theta(counts)
  lo = _jax_loss(contrasts, jnp.asarray(feats, jnp.float32), jnp.asarray(text, jnp.float32),
                 jnp.float32(np.log(100.0)), theta, "adaptive", counts)
  with jax.enable_x64(True):
    hi = _jax_loss(contrasts, jnp.asarray(feats), jnp.asarray(text), jnp.asarray(np.log(100.0)),
                   jnp.asarray(theta, jnp.float64), "adaptive", counts)
  np.testing.assert_allclose(float(lo), float(hi), rtol=1e-5)


def test_topk_negatives_come_from_the_levels_above_and_skip_the_path():
  paths, depth, children, roots = _random_tree(80)
  sampler = hgr_negatives.ContrastSampler(paths, depth, children, roots, out_ratio=1.0, in_ratio=1.0, k=1,
                                num_negatives=500)
  label = int(np.argmax(depth))
  c = sampler.sample(label, np.random.default_rng(0))
  for row, k, m, ok in zip(c.node_ids, c.k_index, c.m_index, c.group_mask):
    if not ok:
      continue
    anchor, negs = row[0], row[1:][row[1:] >= 0]
    level = c.inner_depths[k, m]
    want_depth = max(level - 1, 0)
    assert set(depth[negs]) <= {want_depth}
    assert not set(negs) & set(sampler.path(anchor))
    # Unlimited budget: every candidate at that depth outside the path is used.
    expected = set(np.flatnonzero(depth == want_depth)) - set(sampler.path(anchor))
    assert set(negs.tolist()) == expected


def test_padding_contrasts_give_finite_gradients():
  columns = jnp.array([[0, 1, -1], [-1, -1, -1]], jnp.int32)
  weights = jnp.array([1.0, 0.0])
  f = lambda img, txt: hgr.om_loss(img, txt, columns, weights, jnp.float32(0.0))[0]
  g = jax.grad(f, argnums=(0, 1))(jnp.ones((2, 4)) / 2, jnp.eye(2, 4))
  assert all(np.isfinite(np.asarray(x)).all() for x in g)


def test_unknown_scheme_and_sampler_are_named():
  with pytest.raises(UserError, match="hgr.level_weights='linear'"):
    hgr.loop_weights("linear", jnp.zeros((2,), jnp.int32))
  paths, depth, children, roots = _random_tree()
  with pytest.raises(UserError, match="hgr.sampler='simi'"):
    hgr_negatives.ContrastSampler(paths, depth, children, roots, strategy="simi")


def test_near_simi_takes_the_most_similar_nodes_around_the_level():
  paths, depth, children, roots = _random_tree(80)
  emb = np.random.default_rng(3).normal(size=(len(depth), 8))
  sim = lambda a: emb @ emb[a]
  sampler = hgr_negatives.ContrastSampler(paths, depth, children, roots, out_ratio=0.25, in_ratio=0.25, k=1,
                                num_negatives=3, strategy="near_simi", similarity_fn=sim)
  label = int(np.argmax(depth))
  c = sampler.sample(label, np.random.default_rng(0))
  row = c.node_ids[0]
  anchor, negs = row[0], row[1:][row[1:] >= 0]
  d = c.inner_depths[0, 0]
  pool = [n for n in np.flatnonzero(np.abs(depth - d) <= 1)
          if n not in set(sampler.path(anchor)) and n not in set(children[anchor])]
  assert len(pool) > 3  # More candidates than the budget: ranking decides.
  expected = sorted(pool, key=lambda n: -sim(anchor)[n])[:3]
  assert negs.tolist() == expected


def test_near_simi_without_similarities_when_every_pool_fits():
  """No pretrained tower (the demo's case): every node within one level of the contrast's level, except the
  anchor's path and children, is a negative; a pool larger than num_negatives is refused, naming the fix."""
  paths, depth, children, roots = _random_tree(80)
  largest = max(int((np.abs(depth - d) <= 1).sum()) for d in range(int(depth.max()) + 1))
  with pytest.raises(UserError, match=f"raise hgr.num_negatives to {largest} "):
    hgr_negatives.ContrastSampler(paths, depth, children, roots, strategy="near_simi", num_negatives=largest - 1)
  sampler = hgr_negatives.ContrastSampler(paths, depth, children, roots, out_ratio=1.0, in_ratio=1.0, k=1,
                                          num_negatives=largest, strategy="near_simi")
  c = sampler.sample(int(np.argmax(depth)), np.random.default_rng(0))
  for row, k, m, ok in zip(c.node_ids, c.k_index, c.m_index, c.group_mask):
    if not ok:
      continue
    anchor, negs = row[0], row[1:][row[1:] >= 0]
    d = c.inner_depths[k, m]
    pool = {int(n) for n in np.flatnonzero(np.abs(depth - d) <= 1)} - set(sampler.path(anchor).tolist())
    assert set(negs.tolist()) == pool - set(np.asarray(children[anchor]).tolist())
