"""Paper-scale HGR-Net step analysis without a GPU (benchmarks/hgr_step.py --aot): compile, never run.

1. Replays the trainer's contrast step map (`AddContrasts`: ContrastSampler, dedupe, `_bucket`,
   truncate) over the real 19,138-class WordNet hierarchy (built in memory from ../shared/data) to
   list the prompt buckets [U, L] a run compiles and how often each occurs.
2. For each selected bucket, lowers and compiles (abstract inputs, nothing allocated) the engine's
   own train step on 1 device and on an 8-device data-parallel mesh, plus each tower's
   forward+backward alone, and reads XLA's cost and memory analyses.
3. Projects H100 time as FLOPs / (MFU x 989 TFLOP/s bf16 dense peak), and counts the official
   recipe's FLOPs as image tower + (77-token text tower per prompt) x (prompts over all contrasts).
"""
import logging
import os
import pathlib
import tempfile
import time

import hgr_timing
import jax
import jax.numpy as jnp
import numpy as np

from zsl_jax import engine as engine_lib
from zsl_jax import sharding
from zsl_jax.models import clip as clip_lib
from zsl_jax.projects.hgr import negatives
from zsl_jax.projects.hgr import trainer as hgr_trainer
from zsl_jax.projects.hgr.data import batchers
from zsl_jax.projects.hgr.tools import build_hierarchy

logger = logging.getLogger(__name__)

SHARED = pathlib.Path(hgr_timing.REPO).parent / "shared" / "data" / "imagenet"
H100_PEAK = 989e12  # bf16 dense FLOP/s (SXM)
HBM = 80e9


def wordnet_hierarchy():
  """(Hierarchy, train-class indices): WordNet 3.0 over the ImageNet XML WNIDs, as tests/test_hierarchy.py."""
  h, splits, _ = build_hierarchy.build("wordnet", SHARED / "imagenet-testsets.json", SHARED / "winter_2021.txt",
                                       universe=SHARED / "imagenet-xml-wnids.json")
  return h, np.asarray(h.indices(splits["train"]), np.int64)


def paper_sampler(h, num_negatives):
  return negatives.ContrastSampler(h.path_array(), h.depth, h.children, h.nodes_at_depth[0], out_ratio=0.25,
                                   in_ratio=0.5, strategy="topk", k=1, num_negatives=num_negatives)


def replay(h, train, num_negatives, steps):
  """The trainer's own step map over `steps` steps: bucket counts, unique prompts, reference prompts, host ms."""
  tokens = hgr_trainer.prompt_tokens(h, "a photo of a {}.")
  classes = batchers.ClassPureSampler(train, np.arange(len(train)), 256, seed=0)
  step_map = hgr_trainer.AddContrasts(paper_sampler(h, num_negatives), classes, tokens, seed=0)
  buckets, uniq, ref, host_ms, example = {}, [], [], [], None
  for s in range(steps):
    t = time.perf_counter()
    out = step_map(s, {})
    host_ms.append(1e3 * (time.perf_counter() - t))
    key = out["prompt_tokens"].shape
    buckets[key] = buckets.get(key, 0) + 1
    uniq.append(int(out["num_prompts"]))
    ref.append(int((out["columns"][out["group_mask"]] >= 0).sum()))
    example = out
  return dict(buckets=buckets, uniq=np.asarray(uniq), ref=np.asarray(ref), host_ms=np.asarray(host_ms),
              example=example, levels=len(h.nodes_at_depth), classes=len(h), negatives=num_negatives)


def paper_config(args, dry):
  config = hgr_timing.load_hgr_config("demo")   # Embedded data: only its batch layout is used.
  config.optim = hgr_timing.load_hgr_config(None).optim
  if dry:
    config.model.name = "custom"
    config.model.custom.update(dict(hgr_timing.TINY_SIZES, image_resolution=32))
  else:
    config.model.name = "RN50"
  config.batch_size = 16 if dry else 256
  config.compute_dtype = "bfloat16"
  config.hgr.out_ratio, config.hgr.in_ratio, config.hgr.sampler = 0.25, 0.5, "topk"
  config.hgr.num_negatives = 16 if dry else 256
  config.data.num_threads, config.data.prefetch = 1, 1
  return config


def abstract_batch(eng, local, example, bucket):
  """ShapeDtypeStructs of a global batch: the engine's batch layout, the replay's contrasts, bucket [U, L]."""
  repl_keys = set(eng.trainer.replicated_batch_keys)
  spec = {}
  for key, value in local.items():
    value = np.asarray(example[key] if key in example and key != "prompt_tokens" else value)
    shape = bucket if key == "prompt_tokens" else value.shape
    dtype = np.int32 if key == "prompt_tokens" else value.dtype
    where = sharding.replicated(eng.mesh) if key in repl_keys else sharding.batch_sharding(eng.mesh)
    spec[key] = jax.ShapeDtypeStruct(shape, dtype, sharding=where)
  return spec


def compile_stats(lowered):
  compiled = lowered.compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  return dict(flops=float(cost.get("flops", float("nan"))), args=mem.argument_size_in_bytes,
              temp=mem.temp_size_in_bytes, out=mem.output_size_in_bytes, alias=mem.alias_size_in_bytes)


def tower_stats(eng, method, shape, dtype):
  """FLOPs of one CLIP tower's forward+backward (gradient of the summed features w.r.t. the CLIP params)."""
  trainer = eng.trainer
  clip_params = eng.abstract_state["params"]["clip"]
  model_state = eng.abstract_state["model_state"]

  def f(params, state, inputs):
    variables = {"params": params, **state}
    return trainer.module.apply(variables, inputs, method=method).astype(jnp.float32).sum()

  return compile_stats(jax.jit(jax.grad(f)).lower(clip_params, model_state, jax.ShapeDtypeStruct(shape, dtype)))


def make_engine(config, workdir, devices, levels):
  eng = engine_lib.Engine(config, workdir, mesh=sharding.make_mesh(dict(data=len(devices), fsdp=1), devices))
  eng.trainer.level_counts = np.ones(levels, np.float32)  # θ sized for the WordNet depths (not the demo's)
  # Traced, not run: sets eng.tx / abstract_state / state_shardings without allocating the state.
  jax.eval_shape(lambda: eng.build_state(with_optimizer=True))
  return eng


def parse_buckets(text, seen):
  if not text:
    return sorted(seen)
  try:
    chosen = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]
  except ValueError as e:
    raise SystemExit(f"--buckets {text!r}: give comma-separated UxL pairs such as 2048x24,4096x24") from e
  return chosen


def analyse_bucket(eng1, eng8, local, example, bucket):
  """Step and tower costs of one bucket on 1 and 8 devices (compiled only)."""
  step1 = eng1.make_train_step().lower(eng1.abstract_state, abstract_batch(eng1, local, example, bucket))
  step8 = eng8.make_train_step().lower(eng8.abstract_state, abstract_batch(eng8, local, example, bucket))
  text = tower_stats(eng1, clip_lib.CLIP.encode_text, bucket, jnp.int32)
  return dict(step=compile_stats(step1), step8=compile_stats(step8), text=text)


def describe_replay(r, steps):
  total = sum(r["buckets"].values())
  pad_rows = np.asarray([b[0] for b in r["buckets"] for _ in range(r["buckets"][b])]).sum()
  tokens = np.asarray([b[0] * b[1] for b in r["buckets"] for _ in range(r["buckets"][b])]).sum()
  print(f"\nSampler replay: the trainer's AddContrasts over the {r['source']} ({r['classes']:,} classes, "
        f"{r['levels']} levels), {steps} class-pure steps, paper contrasts (K=0.25, M=0.5, topk, "
        f"{r['negatives']} negatives)")
  print(f"unique prompts per step: median {np.median(r['uniq']):.0f}, max {r['uniq'].max()}; reference prompts "
        f"(all contrasts) median {np.median(r['ref']):.0f}; host ms per step median {np.median(r['host_ms']):.2f}, "
        f"p99 {np.percentile(r['host_ms'], 99):.2f}; bucket rows per useful row {pad_rows / r['uniq'].sum():.2f}; "
        f"{len(r['buckets'])} distinct buckets; text tokens encoded vs the reference's "
        f"{tokens / (77 * r['ref'].sum()):.3f}x")
  print("bucket [U x L]: share of steps  " + ", ".join(
      f"{u}x{length}: {100 * n / total:.1f}%" for (u, length), n in sorted(r["buckets"].items())))


def print_aot_table(args, cfg, rows, image, ref_text77, r, batch, engines):
  peak = args.mfu * H100_PEAK
  print(f"\nAOT (compiled, not run): {cfg}, batch {batch} class-pure, bf16 compute, AdamW; 1 device and an "
        f"8-device data-parallel mesh ({len(engines)} CPU host devices stand in for GPUs); load average "
        f"{os.getloadavg()[0]:.2f}")
  print(f"Projection: H100 time = XLA cost-analysis FLOPs / ({args.mfu:.0%} MFU x 989 TFLOP/s bf16 dense); "
        f"8xH100 uses the per-device FLOPs of the 8-device compile. Memory: XLA memory_analysis of the 1-device "
        f"step (arguments + temporaries + non-aliased outputs) against 80 GB.")
  head = (f"{'bucket':>9s}{'share':>7s}{'step TF':>9s}{'text TF':>9s}{'image TF':>9s}{'args GB':>8s}"
          f"{'temp GB':>8s}{'fits80':>7s}{'8dev TF/dev':>12s}{'x total/8':>10s}{'1xH100 ms':>10s}{'img/s':>8s}"
          f"{'8xH100 ms':>10s}{'img/s':>8s}")
  print(head)
  total = sum(r["buckets"].values())
  for bucket, s in rows:
    st, s8 = s["step"], s["step8"]
    need = st["args"] + st["temp"] + st["out"] - st["alias"]
    t1, t8 = st["flops"] / peak, s8["flops"] / peak
    print(f"{bucket[0]:>5d}x{bucket[1]:<3d}{100 * r['buckets'].get(bucket, 0) / total:6.1f}%"
          f"{st['flops'] / 1e12:9.2f}{s['text']['flops'] / 1e12:9.2f}{image['flops'] / 1e12:9.2f}"
          f"{st['args'] / 1e9:8.2f}{st['temp'] / 1e9:8.2f}{'yes' if need <= HBM else 'NO':>7s}"
          f"{s8['flops'] / 1e12:12.2f}{s8['flops'] / (st['flops'] / 8):10.2f}{1e3 * t1:10.1f}{batch / t1:8.0f}"
          f"{1e3 * t8:10.1f}{batch / t8:8.0f}")
  ref_prompts = float(np.mean(r["ref"]))
  ref = image["flops"] + ref_text77 * ref_prompts
  print(f"official recipe (per-contrast text tower on 77 tokens): image {image['flops'] / 1e12:.2f} TF + "
        f"{ref_prompts:.0f} prompts (replay mean) x {ref_text77 / 1e9:.2f} GF (77-token fwd+bwd per prompt, from a "
        f"compiled 257x77 text tower) = {ref / 1e12:.2f} TF per step; 1xH100 at the same MFU "
        f"{1e3 * ref / peak:.1f} ms, {batch / (ref / peak):.0f} img/s")
  print("'x total/8' = per-device FLOPs on 8 devices / (1-device FLOPs / 8): 1.0 means the work is divided; "
        "above 1, some of it (the text tower, whose prompts are replicated) runs on every device")


def run(args):
  dry = args.dry_run
  steps = 40 if dry else args.replay_steps
  with tempfile.TemporaryDirectory() as workdir:
    config = paper_config(args, dry)
    probe = engine_lib.Engine(config, workdir, mesh=sharding.make_mesh(dict(data=1, fsdp=1), jax.devices()[:1]))
    if dry:
      h = probe.trainer.hierarchy
      train = probe.trainer.index.class_list(config.data.train_classes)
      train = np.asarray(h.indices(train), np.int64)
    else:
      h, train = wordnet_hierarchy()
    r = replay(h, train, config.hgr.num_negatives, steps)
    r["source"] = "demo hierarchy" if dry else "WordNet hierarchy"
    describe_replay(r, steps)
    local = hgr_timing.take_batches(probe, 1)[0]
    del probe
    engines = jax.devices()[:8]
    eng1 = make_engine(config, workdir, jax.devices()[:1], r["levels"])
    eng8 = make_engine(config, workdir, engines, r["levels"])
    res = eng1.trainer.clip_config.image_resolution
    image = tower_stats(eng1, clip_lib.CLIP.encode_image, (config.batch_size, res, res, 3), jnp.float32)
    c = config.hgr.num_negatives + 1
    ref_text77 = tower_stats(eng1, clip_lib.CLIP.encode_text, (c, 77), jnp.int32)["flops"] / c
    rows = []
    for bucket in parse_buckets(args.buckets, r["buckets"]):
      t = time.perf_counter()
      rows.append((bucket, analyse_bucket(eng1, eng8, local, r["example"], bucket)))
      logger.info("bucket %s compiled in %.0f s", bucket, time.perf_counter() - t)
    cfg = "tiny CLIP @ 32 px" if dry else "CLIP RN50 @ 224 px"
    print_aot_table(args, cfg, rows, image, ref_text77, r, config.batch_size, engines)
  return 0
