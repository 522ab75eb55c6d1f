"""Full-model parity of the HGR-Net loss: the reference's per-contrast loop on an open_clip
ModifiedResNet CLIP (torch, random weights) vs zsl_jax's batched loss on the converted model, same
images and negatives.

The torch side is the official OM loop (`tree_model.py`): image features once, the text tower re-run
for every (outer anchor, inner level) contrast, weighted cross-entropies summed. The JAX side
encodes the step's unique prompts once and scores all contrasts as one tensor. Loss and gradients
(every CLIP parameter, and θ for adaptive weights) must agree to 1e-5 relative in fp32.

The model is RN50's architecture at toy size (`test_clip_parity._tiny_open_clip`: stem, bottlenecks
with and without downsampling, attention pooling, BatchNorm, a quickgelu text transformer), which
exercises every layer type of RN50 at a fraction of the compile and CPU time; real-size RN50 parity
is `test_clip_parity.test_real_size_parity`. The torch loop's forward runs once per sampled problem
and each weighting scheme back-propagates its own weighted sum through it (the same gradients as
re-running the loop per scheme).
"""
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_hgr_loss import _random_tree
from tests.test_hgr_loss import _torch_weights
from zsl_jax.models import clip as clip_lib
from zsl_jax.models.clip import convert as clip_convert
from zsl_jax.projects.hgr import loss as hgr
from zsl_jax.projects.hgr import negatives as hgr_negatives
from zsl_jax.text import tokenize
from zsl_jax.text import truncate_tokens

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

RES = 64
NEGATIVES = 6


@pytest.fixture(scope="module")
def models():
  from tests.test_clip_parity import _tiny_open_clip  # pylint: disable=import-outside-toplevel
  from zsl_jax.models.torch_io import import_open_clip  # pylint: disable=import-outside-toplevel
  ref = _tiny_open_clip(import_open_clip())
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  config, variables = clip_convert.convert(sd)
  assert config.image_resolution == RES and config.vision_layers == (1, 2, 1, 1)  # ModifiedResNet
  return ref, config, jax.tree.map(jnp.asarray, variables)


@pytest.fixture(scope="module")
def problem():
  paths, depth, children, roots = _random_tree(40, seed=3)
  tokens = tokenize([f"a photo of a thing number {i}." for i in range(len(depth))])
  images = np.random.default_rng(0).normal(size=(3, RES, RES, 3)).astype(np.float32)
  counts = np.bincount(depth, minlength=paths.shape[1]).astype(np.float64)
  theta = np.asarray(hgr.init_theta(counts)) + np.random.default_rng(1).normal(size=len(counts)) * 0.05
  return paths, depth, children, roots, tokens, images, counts, theta.astype(np.float32)


def _torch_loop(ref, sampler, label, negatives, images, tokens):
  """The reference's OM loop on the torch model up to the weights: [(outer depth, [(inner depth, CE)])]."""
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  f = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
  path_y = sampler.path(label)
  outer = list(path_y[::-1][:max(1, math.ceil(sampler.out_ratio * len(path_y)))])
  rows = []
  for k, a in enumerate(outer):
    path_a = sampler.path(a)
    ces = []
    for m in range(max(1, math.ceil(sampler.in_ratio * len(path_a)))):
      cols = list(negatives[(k, m)]) + [int(a)]
      t = torch.nn.functional.normalize(ref.encode_text(torch.from_numpy(tokens[cols]).long()), dim=-1)
      z = ref.logit_scale.exp() * f @ t.T
      target = torch.full((f.shape[0],), len(cols) - 1, dtype=torch.long)
      ces.append((len(path_a) - 1 - m, torch.nn.functional.cross_entropy(z, target)))
    rows.append((len(path_a) - 1, ces))
  return rows


def _torch_loss(rows, theta, scheme, counts):
  """The reference's weighted sum of the loop's cross-entropies under one weighting scheme."""
  w_out = _torch_weights(scheme, [depth for depth, _ in rows], theta, counts)
  total = 0.0
  for k, (_, ces) in enumerate(rows):
    w_in = _torch_weights(scheme, [depth for depth, _ in ces], theta, counts)
    for m, (_, ce) in enumerate(ces):
      total = total + (w_out[k] * w_in[m]).float() * ce
  return total


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("ratios", [(0.25, 0.5), (1.0, 1.0)])
def test_full_model_loss_and_gradients_match_reference(models, problem, ratios):
  ref, config, variables = models
  paths, depth, children, roots, tokens, images, counts, theta = problem
  sampler = hgr_negatives.ContrastSampler(paths, depth, children, roots, out_ratio=ratios[0], in_ratio=ratios[1],
                                num_negatives=NEGATIVES)
  label = int(np.argmax(depth))
  contrasts = sampler.sample(label, np.random.default_rng(5))
  negatives = {(int(k), int(m)): [int(x) for x in row[1:] if x >= 0]
               for k, m, row, ok in zip(contrasts.k_index, contrasts.m_index, contrasts.node_ids,
                                        contrasts.group_mask) if ok}
  unique, columns, _ = hgr_negatives.dedupe_prompts(contrasts.node_ids, multiple=8)
  prompt_tokens = jnp.asarray(truncate_tokens(tokens[unique]))
  module = clip_lib.CLIP(config)
  c = {k: jnp.asarray(v) for k, v in vars(contrasts).items()}

  def per_contrast(params):
    v = {"params": params, "batch_stats": variables["batch_stats"]}
    img = module.apply(v, jnp.asarray(images), method=clip_lib.CLIP.encode_image)
    txt = module.apply(v, prompt_tokens, method=clip_lib.CLIP.encode_text)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    ones = jnp.asarray(contrasts.group_mask, jnp.float32)
    return hgr.om_loss(img, txt, jnp.asarray(columns), ones, params["logit_scale"])[1]  # [G]

  # One compiled VJP serves every weighting: d(sum_g w_g CE_g)/dparams = vjp(CE)(w).
  ce = jax.jit(per_contrast)(variables["params"])
  vjp = jax.jit(lambda p, w: jax.vjp(per_contrast, p)[1](w)[0])

  rows = _torch_loop(ref, sampler, label, negatives, images, tokens)
  for scheme in hgr.SCHEMES:
    t0 = time.time()
    ref.zero_grad()
    tth = torch.tensor(theta, requires_grad=True)
    loss_ref = _torch_loss(rows, tth, scheme, counts)
    loss_ref.backward(retain_graph=True)
    t1 = time.time()

    def weighted(th, ce_values, scheme=scheme):  # Bound now: the loop rebinds `scheme`.
      w = hgr.contrast_weights(scheme, c, th, counts)
      return jnp.sum(w * ce_values), w

    (loss, w), g_theta = jax.value_and_grad(weighted, has_aux=True)(jnp.asarray(theta), ce)
    g_params = jax.block_until_ready(vjp(variables["params"], w))
    t2 = time.time()
    assert abs(float(loss) - loss_ref.item()) <= 1e-5 * abs(loss_ref.item()), scheme
    grads_sd = {k: (p.grad.numpy() if p.grad is not None else np.zeros(p.shape, np.float32))
                for k, p in ref.named_parameters()}
    grads_sd.update({k: b.numpy() for k, b in ref.named_buffers()})
    want = clip_convert.torch_to_flax(clip_convert.normalize_state_dict(grads_sd), config)["params"]
    got_leaves, want_leaves = jax.tree.leaves(jax.device_get(g_params)), jax.tree.leaves(want)
    scale = max(np.linalg.norm(x) for x in want_leaves)
    worst = max(_rel(g, wv) for g, wv in zip(got_leaves, want_leaves) if np.linalg.norm(wv) > 1e-6 * scale)
    overall = _rel(np.concatenate([np.ravel(x) for x in got_leaves]),
                   np.concatenate([np.ravel(x) for x in want_leaves]))
    assert overall <= 1e-5, (scheme, overall)
    assert worst <= 1e-4, (scheme, worst)  # Per tensor, fp32 accumulation.
    if scheme == "adaptive":
      assert _rel(g_theta, tth.grad.numpy()) <= 1e-5
    print(scheme, f"loss {float(loss):.6f} vs {loss_ref.item():.6f}, grad rel {overall:.2e} (worst tensor "
          f"{worst:.2e}), torch {t1 - t0:.1f} s, jax {t2 - t1:.1f} s, compare {time.time() - t2:.1f} s")
