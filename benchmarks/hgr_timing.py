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

from zsl_jax import engine as engine_lib
from zsl_jax import sharding
from zsl_jax.data import pipeline
from zsl_jax.models import clip as clip_lib
from zsl_jax.models import torch_io

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
  config.data.num_threads, config.data.prefetch = 1, 1
  config.mesh.data = 1
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


def time_engine(eng, batches, warmup, unpad=False):
  """Per-step (cpu, wall) after warm-up; each new shape is compiled apart (lower + compile) and timed."""
  state = eng.build_state(with_optimizer=True)
  step = eng.make_train_step()
  keys = tuple(eng.trainer.replicated_batch_keys)
  compiled, compile_s, rows = {}, 0.0, []
  for i, local in enumerate(batches):
    local = dict(local)
    if unpad:
      local["prompt_tokens"] = local["prompt_tokens"][:int(local["num_prompts"])]
    batch = sharding.global_batch(local, eng.mesh, keys)
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
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(b["image"], np.float32)[keep].transpose(0, 3, 1, 2)))
    tokens = np.zeros((b["prompt_tokens"].shape[0], 77), np.int64)
    tokens[:, :b["prompt_tokens"].shape[1]] = b["prompt_tokens"]
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


def text_work(batches):
  """(unique prompts, bucket rows, tokens per row) for zsl_jax; (sequences, 77) for the reference."""
  uniq = np.median([int(b["num_prompts"]) for b in batches])
  rows = np.median([b["prompt_tokens"].shape[0] for b in batches])
  length = np.median([b["prompt_tokens"].shape[1] for b in batches])
  ref = np.median([int((b["columns"][b["group_mask"]] >= 0).sum()) for b in batches])
  groups = np.median([int(b["group_mask"].sum()) for b in batches])
  return uniq, rows, length, ref, groups


def print_table(args, clip_name, results, work, batches):
  uniq, rows, length, ref, groups = work
  load = os.getloadavg()
  print(f"\nHGR-Net train step, {clip_name} @ {args.resolution} px, class-pure batch {args.batch}, K=0.25 M=0.5, "
        f"{args.sampler} with every candidate as negative; {args.threads} thread(s) per side; median of "
        f"{len(batches) - args.warmup} step(s) after {args.warmup} warm-up; load average {load[0]:.2f} "
        f"on {os.cpu_count()} cores")
  print(f"per step: {groups:.0f} contrasts; zsl_jax encodes {uniq:.0f} unique prompts padded to {rows:.0f} rows x "
        f"{length:.0f} tokens ({rows - uniq:.0f} padding rows); the reference encodes {ref:.0f} prompts x 77 tokens")
  print(f"{'side':44s}{'cpu s/step':>11s}{'wall s/step':>12s}{'cpu/wall':>9s}{'compile s':>10s}  shapes")
  for name, (r, compile_s, shapes) in results.items():
    cpu, wall = np.median(r[:, 0]), np.median(r[:, 1])
    shapes = " ".join(f"{s[0]}x{s[1]}" for s in shapes) if shapes else "-"
    comp = f"{compile_s:10.1f}" if compile_s is not None else f"{'-':>10s}"
    print(f"{name:44s}{cpu:11.3f}{wall:12.3f}{cpu / wall:9.2f}{comp}  {shapes}")
  base = results["zsl_jax engine step"][0]
  for name, (r, _, _) in results.items():
    if name == "zsl_jax engine step":
      continue
    kind = ("padding only (same step, same framework)" if "padding" in name else
            "algorithm + framework: 77-token per-contrast prompts in torch vs truncated deduplicated prompts "
            "in XLA")
    print(f"ratio {name} / zsl_jax engine step: cpu {np.median(r[:, 0]) / np.median(base[:, 0]):.2f}x, wall "
          f"{np.median(r[:, 1]) / np.median(base[:, 1]):.2f}x  [{kind}]")


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
    if not args.no_unpadded:
      results["zsl_jax step, bucket padding removed"] = time_engine(eng, batches, args.warmup, unpad=True)
    if not args.skip_torch:
      results["official recipe (torch, open_clip)"] = (
          time_torch(eng.trainer.clip_config, len(eng.trainer.level_counts), batches, args.warmup, args.threads),
          None, ())
  print_table(args, "tiny CLIP" if args.dry_run else "CLIP RN50 (random weights)", results, text_work(batches),
              batches)
  return 0
