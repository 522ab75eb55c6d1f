"""The HGR text tower divided over devices, on packed prompts in static chunks.

Packing several prompts per row must give each prompt the feature it has alone; the sampler's step
bound must cover every step it draws; the engine's loss and gradients on 8 simulated devices must
equal the 1-device step's, with each device's share of the text tower's compiled FLOPs at most 1/6;
evaluation prompts are split over the devices too and come back replicated.
"""
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hgr_rn50
from tests.test_hgr_loss import _random_tree
from zsl_jax import engine as engine_lib
from zsl_jax import sharding
from zsl_jax.models import clip as clip_lib
from zsl_jax.models.clip import packing
from zsl_jax.projects.hgr import negatives
from zsl_jax.text import tokenizer

TINY = clip_lib.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=16,
                           vision_patch_size=None, transformer_width=64, transformer_heads=2, transformer_layers=2)


def _prompts(n, seed=0):
  rng = np.random.default_rng(seed)
  words = ["dog", "great dane", "hearing dog", "wire-haired fox terrier", "x", "sea anemone", "tree"]
  names = [" ".join(rng.choice(words, rng.integers(1, 4))) for _ in range(n)]
  return tokenizer.tokenize([f"a photo of a {name}." for name in names])


# --------------------------------------------------------------------------- packing
def test_packed_rows_give_each_prompt_its_own_feature():
  tokens = _prompts(23)
  lengths = negatives.prompt_lengths(tokens)
  layout = packing.Layout(row_tokens=32, row_slots=32 // int(lengths.min()), chunk_rows=2, chunks=12)
  packed, pool, slot, chunks = packing.pack(tokens, lengths, layout)
  used = int((pool >= 0).any(1).sum())
  assert chunks == -(-used // 2) and used <= packing.rows_bound(lengths.sum(), 32, int(lengths.max()))
  assert len(set(slot.tolist())) == len(tokens) and (pool.reshape(-1)[slot] >= 0).all()
  for i in range(len(tokens)):  # Each prompt's tokens lie contiguous, ending at its pooled EOT.
    row, end = divmod(int(slot[i]), layout.row_slots)
    eot = pool[row, end]
    np.testing.assert_array_equal(packed[row, eot + 1 - lengths[i]:eot + 1], tokens[i, :lengths[i]])
  module = clip_lib.CLIP(TINY)
  variables = clip_lib.init_variables(TINY)
  alone = module.apply(variables, jnp.asarray(tokens), method=clip_lib.CLIP.encode_text)
  together = module.apply(variables, jnp.asarray(packed), jnp.asarray(pool), method=clip_lib.CLIP.encode_text_packed)
  got = np.asarray(together).reshape(-1, TINY.embed_dim)[slot]
  np.testing.assert_allclose(got, alone, rtol=0, atol=1e-6 * float(np.abs(alone).max()))


def test_chunk_loop_runs_only_the_chunks_in_use_and_gives_their_gradients():
  """NaN inputs in the unused chunks never reach the output or a gradient (they are not run, forward or
  backward), and the custom backward (each chunk's forward again) equals autodiff of the plain loop."""
  rng = np.random.default_rng(0)
  n, r, d, e, chunks = 4, 3, 5, 6, 2
  variables = {"w": jnp.asarray(rng.normal(size=(d, e)), jnp.float32)}
  x = rng.normal(size=(n, r, d)).astype(np.float32)
  x[chunks:] = np.nan                                                          # [n, r, d]
  aux = jnp.asarray(rng.integers(0, 3, (n, r)), jnp.int32)                     # [n, r]
  cotangent = jnp.asarray(rng.normal(size=(n, r, e)), jnp.float32)
  encode = lambda v, xi, ai: jnp.tanh(xi @ v["w"]) * (ai[:, None] + 1.0)      # [r, e]
  loop = packing.chunk_loop(encode)
  out, (g_vars, g_x) = jax.value_and_grad(lambda v, xs: (loop(v, xs, (aux,), chunks) * cotangent).sum(),
                                          argnums=(0, 1))(variables, jnp.asarray(x))
  plain = lambda v, xs: sum((encode(v, xs[i], aux[i]) * cotangent[i]).sum() for i in range(chunks))
  want, (w_vars, w_x) = jax.value_and_grad(plain, argnums=(0, 1))(variables, jnp.asarray(x[:chunks]))
  np.testing.assert_allclose(out, want, rtol=1e-6)
  np.testing.assert_allclose(g_vars["w"], w_vars["w"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_x[:chunks], w_x, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(g_x[chunks:], 0.0)
  np.testing.assert_array_equal(loop(variables, jnp.asarray(x), (aux,), chunks)[chunks:], 0.0)


@pytest.mark.parametrize("strategy", negatives.SAMPLERS)
@pytest.mark.parametrize("method", negatives.METHODS)
def test_step_bound_covers_every_sampled_step(strategy, method):
  paths, depth, children, roots = _random_tree(80, seed=4)
  lengths = np.random.default_rng(0).integers(8, 20, len(depth))
  similarity = lambda node: np.cos(np.arange(len(depth)) * (node + 1.0))
  sampler = negatives.ContrastSampler(paths, depth, children, roots, strategy=strategy, method=method,
                                      num_negatives=5, similarity_fn=similarity)
  labels = np.flatnonzero(depth >= 3)
  most_prompts, most_tokens = sampler.step_bound(labels, lengths)
  seen_prompts = seen_tokens = 0
  for step in range(300):
    c = sampler.sample(int(labels[step % len(labels)]), np.random.default_rng(step))
    unique = np.unique(c.node_ids[c.node_ids >= 0])
    seen_prompts, seen_tokens = max(seen_prompts, len(unique)), max(seen_tokens, int(lengths[unique].sum()))
  assert seen_prompts <= most_prompts and seen_tokens <= most_tokens
  assert most_prompts <= len(depth) and seen_prompts >= 0.4 * most_prompts  # A bound, not a blanket.


# --------------------------------------------------------------------------- the step on 1 and 8 devices
@pytest.fixture(scope="module")
def engines(tmp_path_factory):
  """Demo HGR engines on 1 and 8 devices, 8 packed rows per chunk on both (1 per device on 8), 4 class slots."""
  root = str(tmp_path_factory.mktemp("hgr_demo_data"))
  out = {}
  for devices in (1, 8):
    config = hgr_rn50.get_config("demo")
    config.data.demo_root = root
    config.data.num_threads = 2
    config.batch_size = 8
    config.hgr.classes_per_step = 4  # 4 class slots of 2 images: each device holds one image of one slot.
    config.hgr.sampler = "random"   # More prompts per step than topk: several rows.
    config.hgr.prompt_chunk_rows = 8
    mesh = sharding.make_mesh(dict(data=devices, fsdp=1), jax.devices()[:devices])
    out[devices] = engine_lib.Engine(config, tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()), mesh=mesh)
  return out


def _loss_and_grads(eng, local):
  state = eng.build_state(with_optimizer=True)
  batch = sharding.global_batch(local, eng.mesh, eng.trainer.replicated_batch_keys)
  loss_fn = lambda p: eng.trainer.loss({"params": p, **state["model_state"]}, batch, None, 0)[0]
  return jax.device_get(jax.jit(jax.value_and_grad(loss_fn))(state["params"]))


def test_step_on_8_devices_equals_1_device(engines):
  local = next(engines[8].trainer.train_iterator())
  assert engines[8].trainer.layout == engines[1].trainer.layout and int(local["prompt_chunks"]) >= 1
  assert int(local["num_prompts"]) > engines[8].trainer.layout.row_slots  # More than one row of prompts.
  loss8, grads8 = _loss_and_grads(engines[8], local)
  loss1, grads1 = _loss_and_grads(engines[1], local)
  assert np.isfinite(loss1) and abs(loss8 - loss1) <= 1e-6 * abs(loss1)
  text_grad = np.abs(grads1["clip"]["transformer"]["resblocks"]["0"]["mlp"]["c_fc"]["kernel"]).max()
  assert text_grad > 1e-4  # The text tower is trained through the packed path.
  # Float32 sums in another order (per-device partial sums, then an all-reduce): equal to 1e-6 of the gradient's
  # norm, every entry to 1e-5 of the largest (the positional embedding's sums over every token differ most).
  flat8, flat1 = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(t)]) for t in (grads8, grads1))
  assert np.linalg.norm(flat8 - flat1) <= 1e-6 * np.linalg.norm(flat1), np.linalg.norm(flat8 - flat1)
  np.testing.assert_allclose(flat8, flat1, rtol=0, atol=1e-5 * np.abs(flat1).max())


def test_each_device_encodes_its_share_of_the_prompts(engines):
  flops = {}
  for devices, eng in engines.items():
    layout = eng.trainer.layout
    params = eng.abstract_state["params"]
    model_state = eng.abstract_state["model_state"]
    repl = sharding.replicated(eng.mesh)
    batch = {"prompt_tokens": jax.ShapeDtypeStruct((layout.rows, layout.row_tokens), jnp.int32, sharding=repl),
             "prompt_pool": jax.ShapeDtypeStruct((layout.rows, layout.row_slots), jnp.int32, sharding=repl),
             "prompt_chunks": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)}
    text = lambda p, s, b, eng=eng: eng.trainer.encode_step_prompts({"params": p, **s}, b).sum()
    compiled = jax.jit(jax.grad(text)).lower(params, model_state, batch).compile()
    cost = compiled.cost_analysis()
    flops[devices] = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  assert flops[8] <= flops[1] / 6, flops


def test_eval_prompts_are_split_over_devices_and_replicated(engines):
  eng = engines[8]
  state = eng.build_state(with_optimizer=False)
  variables = {"params": state["params"], **state["model_state"]}
  tokens = tokenizer.truncate_tokens(_prompts(13, seed=1))  # Not a multiple of 8: padded inside.
  got = eng.trainer.eval_offer()["encode_prompts"](variables, tokens)
  assert got.shape == (13, eng.trainer.clip_config.embed_dim) and got.sharding.is_fully_replicated
  clip_vars = eng.trainer.clip_variables(jax.device_get(variables))
  want = eng.trainer.module.apply(clip_vars, jnp.asarray(tokens), method=clip_lib.CLIP.encode_text)
  want = want / jnp.linalg.norm(want, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-6)
