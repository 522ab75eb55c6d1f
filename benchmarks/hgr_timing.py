"""Side-by-side timing for benchmarks/hgr_step.py: the engine's HGR step vs the official torch recipe.

Imported by hgr_step.py after the thread limits are set (jax and torch read them at import).
"""
import dataclasses
import importlib.util
import logging
import os
import tempfile
import time

import jax
import numpy as np
import optax

from zsl_jax import engine as engine_lib
from zsl_jax import sharding
from zsl_jax.data import pipeline
from zsl_jax.data import transforms
from zsl_jax.models import clip as clip_lib
from zsl_jax.models import torch_io
from zsl_jax.projects.hgr import trainer as hgr_trainer

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RN50_SIZES = dict(embed_dim=1024, vision_layers=(3, 4, 6, 3), vision_width=64, transformer_width=512,
                  transformer_heads=8, transformer_layers=12)  # OpenAI RN50 (clip PRESETS) at any resolution
ALL_NEGATIVES = 64  # >= nodes of the demo hierarchy (checked in run): every candidate is a negative
TINY_SIZES = dict(embed_dim=64, vision_layers=(1, 1, 1, 1), vision_width=16, transformer_width=64,
                  transformer_heads=2, transformer_layers=2)


def load_hgr_config(arg):
  spec = importlib.util.spec_from_file_location("hgr_rn50_config", os.path.join(REPO, "configs", "hgr_rn50.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def bench_config(args, sizes):
  """The demo data with CLIP `sizes` at args.resolution, the paper's contrasts (topk, every candidate)."""
  config = load_hgr_config("demo")
  config.optim = load_hgr_config(None).optim          # The paper's AdamW 3e-7 + clip 1.0, SGD on θ.
  config.model.name = "custom"
  config.model.custom.update(dict(sizes, image_resolution=args.resolution))
  config.batch_size = args.batch
  config.compute_dtype = "float32"
  config.hgr.out_ratio, config.hgr.in_ratio = 0.25, 0.5
  config.hgr.sampler = args.sampler
  config.hgr.num_negatives = ALL_NEGATIVES             # More than the demo hierarchy has nodes: all negatives.
  recipe = load_hgr_config(None).hgr
  config.hgr.level_weights, config.hgr.prompt_chunk_rows = recipe.level_weights, recipe.prompt_chunk_rows
  config.hgr.classes_per_step, config.hgr.negatives_from = recipe.classes_per_step, recipe.negatives_from
  config.data.num_threads, config.data.prefetch = 1, 1
  config.mesh.data = 1
  if args.conv_impl:
    config.model.conv_impl = args.conv_impl
  return config


def take_batches(eng, count):
  """`count` batches of the trainer's own iterator, fetched before timing (no loader CPU in the steps)."""
  it = eng.trainer.train_iterator()
  batches = [next(it) for _ in range(count)]
  del it
  return batches


def timed(fn):
  c, w = time.process_time(), time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return out, time.process_time() - c, time.perf_counter() - w


def time_engine(eng, batches, warmup):
  """Per-step (cpu, wall) after warm-up; each new shape is compiled apart (lower + compile) and timed."""
  state = eng.build_state(with_optimizer=True)
  step = eng.make_train_step()
  keys = tuple(eng.trainer.replicated_batch_keys)
  compiled, compile_s, rows = {}, 0.0, []
  for i, local in enumerate(batches):
    batch = sharding.global_batch(dict(local), eng.mesh, keys)
    shape = local["prompt_tokens"].shape
    if shape not in compiled:
      t = time.perf_counter()
      compiled[shape] = step.lower(state, batch).compile()
      compile_s += time.perf_counter() - t
    run = compiled[shape]
    (state, measured), cpu, wall = timed(lambda run=run, state=state, batch=batch: run(state, batch))
    if i >= warmup:
      rows.append((cpu, wall))
    loss = float(measured["loss"])
  if not np.isfinite(loss):
    raise RuntimeError(f"zsl_jax step produced loss {loss}")
  return np.asarray(rows), compile_s, sorted(compiled)


def breakdown(eng, local, reps):
  """CPU s of the step's parts, each jitted alone through the trainer's own functions (`--breakdown`)."""
  state = eng.build_state(with_optimizer=True)
  batch = sharding.global_batch(dict(local), eng.mesh, tuple(eng.trainer.replicated_batch_keys))
  tr, model_state = eng.trainer, state["model_state"]
  grad = lambda f: jax.jit(jax.grad(lambda p: f({"params": p, **model_state}).sum()))
  update = lambda s: optax.apply_updates(s["params"], eng.tx.update(s["params"], s["opt_state"], s["params"])[0])
  parts = {
      "image tower fwd+bwd": (grad(lambda v: tr.encode_images(v, batch["image"], train=True)[0]), state["params"]),
      "text tower fwd+bwd (packed chunks)": (grad(lambda v: tr.encode_step_prompts(v, batch)), state["params"]),
      "loss + gradients": (jax.jit(jax.grad(lambda p: tr.loss({"params": p, **model_state}, batch, None, 0)[0])),
                           state["params"]),
      "optimizer update (AdamW + clip, SGD on θ)": (jax.jit(update), state),
  }
  out = {}
  for name, (fn, arg) in parts.items():
    jax.block_until_ready(fn(arg))
    out[name] = np.median([timed(lambda fn=fn, arg=arg: fn(arg))[1] for _ in range(reps)])
  return out


def torch_model(clip_config):
  """open_clip's CLIP (quick GELU, as OpenAI's) with the trainer's sizes, random weights."""
  import torch  # pylint: disable=import-outside-toplevel
  torch_io.import_open_clip()
  from open_clip import model as oc_model  # pylint: disable=import-outside-toplevel
  c = clip_config
  text = dict(context_length=77, vocab_size=c.vocab_size, width=c.transformer_width, heads=c.transformer_heads,
              layers=c.transformer_layers)
  vision = dict(layers=list(c.vision_layers), width=c.vision_width, image_size=c.image_resolution)
  torch.manual_seed(0)
  return oc_model.CLIP(embed_dim=c.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True).eval()


def slot_tokens(batch):
  """[slots, 77] int64: every packed prompt slot's own tokens (zeros for empty slots), for the torch side.

  A row's prompts are contiguous from its start, so slot k spans (EOT of slot k-1) + 1 .. EOT of slot k.
  """
  packed, pool = np.asarray(batch["prompt_tokens"]), np.asarray(batch["prompt_pool"])
  out = np.zeros((pool.size, 77), np.int64)
  for row, k in zip(*np.nonzero(pool >= 0)):
    start = pool[row, k - 1] + 1 if k else 0
    out[row * pool.shape[1] + k, :pool[row, k] + 1 - start] = packed[row, start:pool[row, k] + 1]
  return out


def make_torch_step(model, num_levels):
  """The official step (the reference `main.py` loop): per-contrast 77-token text tower, OM loss, AdamW + SGD."""
  import torch  # pylint: disable=import-outside-toplevel
  fn = torch.nn.functional
  theta = torch.nn.Parameter(torch.full((num_levels,), 0.01))
  adamw = torch.optim.AdamW(model.parameters(), lr=3e-7, weight_decay=0.0)
  sgd = torch.optim.SGD([theta], lr=1e-4)

  def weights(n):
    return torch.softmax(100.0 ** theta[:n], 0)

  def step(b):
    adamw.zero_grad(set_to_none=True)
    sgd.zero_grad(set_to_none=True)
    keep = np.asarray(b[pipeline.MASK_KEY], bool)
    x = np.asarray(b["image"])
    if x.dtype == np.uint8:  # The loaders may send uint8 (normalised on device on the zsl_jax side).
      x = (x / np.float32(255) - np.float32(transforms.CLIP_MEAN)) / np.float32(transforms.CLIP_STD)
    x = torch.from_numpy(np.ascontiguousarray(x.astype(np.float32)[keep].transpose(0, 3, 1, 2)))
    tokens = slot_tokens(b)                                                    # [slots, 77]
    f = fn.normalize(model.encode_image(x), dim=-1)                            # [B, E]
    groups = np.flatnonzero(b["group_mask"])
    k_idx, m_idx = b["k_index"][groups], b["m_index"][groups]
    w_out = weights(int(k_idx.max()) + 1)
    total = 0.0
    for g, k, m in zip(groups, k_idx, m_idx):
      cols = b["columns"][g][b["columns"][g] >= 0]
      prompts = torch.from_numpy(tokens[np.concatenate([cols[1:], cols[:1]])])  # negatives, then the anchor
      t = fn.normalize(model.encode_text(prompts), dim=-1)                     # [|C|, E]
      z = model.logit_scale.exp() * f @ t.T                                    # [B, |C|]
      w_in = weights(int((k_idx == k).sum()))
      target = torch.full((f.shape[0],), len(cols) - 1)
      total = total + w_out[k] * w_in[m] * fn.cross_entropy(z, target)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    adamw.step()
    sgd.step()
    return float(total.detach())

  return step


def time_torch(clip_config, num_levels, batches, warmup, threads):
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  step = make_torch_step(torch_model(clip_config), num_levels)
  rows = []
  for i, b in enumerate(batches):
    c, w = time.process_time(), time.perf_counter()
    loss = step(b)
    if i >= warmup:
      rows.append((time.process_time() - c, time.perf_counter() - w))
  if not np.isfinite(loss):
    raise RuntimeError(f"torch step produced loss {loss}")
  return np.asarray(rows)


def text_work(batches, layout):
  """Medians for zsl_jax (unique prompts, their tokens, rows encoded) and the padding encoded; reference
  prompts and contrasts."""
  uniq = np.median([int(b["num_prompts"]) for b in batches])
  useful, encoded = zip(*(hgr_trainer.text_tokens(b, layout) for b in batches))
  rows = np.median([int(b["prompt_chunks"]) * layout.chunk_rows for b in batches])
  pad = 1 - np.sum(useful) / np.sum(encoded)
  ref = np.median([int((b["columns"][b["group_mask"]] >= 0).sum()) for b in batches])
  groups = np.median([int(b["group_mask"].sum()) for b in batches])
  return uniq, np.median(useful), rows, layout.row_tokens, pad, ref, groups


def print_table(args, clip_name, results, work, batches, parts):
  uniq, useful, rows, length, pad, ref, groups = work
  load = os.getloadavg()
  print(f"\nHGR-Net train step, {clip_name} @ {args.resolution} px, class-pure batch {args.batch}, K=0.25 M=0.5, "
        f"{args.sampler} with every candidate as negative; {args.threads} thread(s) per side; median of "
        f"{len(batches) - args.warmup} step(s) after {args.warmup} warm-up; load average {load[0]:.2f} "
        f"on {os.cpu_count()} cores")
  print(f"per step: {groups:.0f} contrasts; zsl_jax encodes {uniq:.0f} unique prompts ({useful:.0f} tokens) packed "
        f"into {rows:.0f} rows x {length} tokens ({100 * pad:.0f}% padding); the reference encodes {ref:.0f} prompts "
        f"x 77 tokens")
  print(f"{'side':44s}{'cpu s/step':>11s}{'wall s/step':>12s}{'cpu/wall':>9s}{'compile s':>10s}  shapes")
  for name, (r, compile_s, shapes) in results.items():
    cpu, wall = np.median(r[:, 0]), np.median(r[:, 1])
    shapes = " ".join(f"{s[0]}x{s[1]}" for s in shapes) if shapes else "-"
    comp = f"{compile_s:10.1f}" if compile_s is not None else f"{'-':>10s}"
    print(f"{name:44s}{cpu:11.3f}{wall:12.3f}{cpu / wall:9.2f}{comp}  {shapes}")
  base = results["zsl_jax engine step"][0]
  for name, (r, _, _) in results.items():
    if name != "zsl_jax engine step":
      print(f"ratio {name} / zsl_jax engine step: cpu {np.median(r[:, 0]) / np.median(base[:, 0]):.2f}x, wall "
            f"{np.median(r[:, 1]) / np.median(base[:, 1]):.2f}x  [algorithm + framework: 77-token per-contrast "
            f"prompts in torch vs packed deduplicated prompts in XLA]")
  for name, cpu in parts.items():
    print(f"  part: {name:48s} cpu {cpu:.3f} s")


def run(args):
  sizes = TINY_SIZES if args.dry_run else RN50_SIZES
  iters = 1 if args.dry_run else args.iters
  with tempfile.TemporaryDirectory() as workdir:
    eng = engine_lib.Engine(bench_config(args, sizes), workdir)
    assert len(eng.trainer.hierarchy) <= ALL_NEGATIVES, "raise ALL_NEGATIVES to take every candidate"
    if not args.dry_run:  # The custom sizes are OpenAI RN50's, only the resolution differs.
      assert eng.trainer.clip_config == dataclasses.replace(clip_lib.get_config("RN50"),
                                                            image_resolution=args.resolution)
    batches = take_batches(eng, args.warmup + iters)
    results = {"zsl_jax engine step": time_engine(eng, batches, args.warmup)}
    parts = breakdown(eng, batches[0], max(iters, 1)) if args.breakdown else {}
    if not args.skip_torch:
      results["official recipe (torch, open_clip)"] = (
          time_torch(eng.trainer.clip_config, len(eng.trainer.level_counts), batches, args.warmup, args.threads),
          None, ())
    work = text_work(batches, eng.trainer.layout)
  print_table(args, "tiny CLIP" if args.dry_run else "CLIP RN50 (random weights)", results, work, batches, parts)
  return 0
