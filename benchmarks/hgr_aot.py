"""Paper-scale HGR-Net step analysis without a GPU (benchmarks/hgr_step.py --aot): compile, never run.

1. Replays the trainer's own step map (`AddContrasts`: ContrastSampler, dedupe, packing into the
   static layout of `negatives.prompt_layout`) over the real 19,138-class WordNet hierarchy (built in
   memory from ../shared/data) for 1 and 8 devices: compiled prompt shapes, chunks in use, and the
   padding encoded (tokens encoded that belong to no prompt), beside the former scheme (one prompt
   per row, rows padded to a power-of-two bucket >= 64, tokens to a multiple of 8).
2. Lowers and compiles (abstract inputs, nothing allocated) the engine's own train step on 1 device
   and on an 8-device data-parallel mesh, with the layout's static shape (one compilation covers
   every step, up to the sampler's worst case), and reads XLA's memory analysis per device.
3. FLOPs: XLA's cost analysis counts a loop body once, so the text tower is costed as (chunks in
   use) x (one chunk's forward, then its forward again and backward, per device: `packing.chunk_loop`,
   compiled alone), and the rest of the step as the step's figure less one chunk. H100 time = FLOPs / (MFU x 989
   TFLOP/s bf16 dense); the official recipe is image tower + 77-token text tower per prompt of
   every contrast.
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
BUDGET = 0.9 * HBM  # 10 % headroom
DEVICES = (1, 8)


def wordnet_hierarchy():
  """(Hierarchy, train-class indices): WordNet 3.0 over the ImageNet XML WNIDs, as tests/test_hierarchy.py."""
  h, splits, _ = build_hierarchy.build("wordnet", SHARED / "imagenet-testsets.json", SHARED / "winter_2021.txt",
                                       universe=SHARED / "imagenet-xml-wnids.json")
  return h, np.asarray(h.indices(splits["train"]), np.int64)


def paper_sampler(h, num_negatives):
  return negatives.ContrastSampler(h.path_array(), h.depth, h.children, h.nodes_at_depth[0], out_ratio=0.25,
                                   in_ratio=0.5, strategy="topk", k=1, num_negatives=num_negatives)


def former_tokens(n, longest):
  """Tokens the former scheme encoded: n prompts padded to max(64, next power of two) rows x L (multiple of 8)."""
  rows = max(64, 1 << int(np.ceil(np.log2(max(n, 1)))))
  return rows * min(-(-longest // 8) * 8, 77)


def longest_prompt(pool):
  """The longest packed prompt: a row's prompts are contiguous, so lengths are the steps between EOT positions."""
  eot = np.concatenate([np.full((len(pool), 1), -1), pool], axis=1)
  return int(np.diff(eot, axis=1)[pool >= 0].max())


def replay(h, train, num_negatives, steps):
  """The trainer's step map over `steps` steps for each device count: shapes, chunks, padding, host ms."""
  tokens = hgr_trainer.prompt_tokens(h, "a photo of a {}.")
  sampler = paper_sampler(h, num_negatives)
  classes = batchers.ClassPureSampler(train, np.arange(len(train)), 256, seed=0)
  r = dict(levels=len(h.nodes_at_depth), classes=len(h), negatives=num_negatives, layouts={}, runs={})
  for d in DEVICES:
    t = time.perf_counter()
    layout, info = negatives.prompt_layout(sampler, train, tokens, d, seed=0)
    step_map = hgr_trainer.AddContrasts(sampler, classes, tokens, seed=0, layout=layout)
    r["layouts"][d] = (layout, info, time.perf_counter() - t)
    run = dict(shapes=set(), chunks=[], useful=[], encoded=[], uniq=[], ref=[], former=[], host_ms=[])
    for s in range(steps):
      t = time.perf_counter()
      out = step_map(s, {})
      run["host_ms"].append(1e3 * (time.perf_counter() - t))
      useful, encoded = hgr_trainer.text_tokens(out, layout)
      run["shapes"].add(out["prompt_tokens"].shape)
      run["chunks"].append(int(out["prompt_chunks"]))
      run["useful"].append(useful)
      run["encoded"].append(encoded)
      run["uniq"].append(int(out["num_prompts"]))
      run["ref"].append(int((out["columns"][out["group_mask"]] >= 0).sum()))
      run["former"].append(former_tokens(int(out["num_prompts"]), longest_prompt(out["prompt_pool"])))
      run["example"] = out
    r["runs"][d] = {k: (np.asarray(v) if isinstance(v, list) else v) for k, v in run.items()}
  return r


def describe_replay(r, steps):
  print(f"\nSampler replay: the trainer's AddContrasts over the {r['source']} ({r['classes']:,} classes, "
        f"{r['levels']} levels), {steps} class-pure steps, paper contrasts (K=0.25, M=0.5, topk, "
        f"{r['negatives']} negatives)")
  one = r["runs"][1]
  print(f"unique prompts per step: median {np.median(one['uniq']):.0f}, max {one['uniq'].max()}; reference prompts "
        f"(all contrasts) median {np.median(one['ref']):.0f}; prompt tokens per step median "
        f"{np.median(one['useful']):.0f}; former scheme (a row per prompt, power-of-two buckets): "
        f"{one['former'].sum() / one['useful'].sum():.2f} tokens encoded per prompt token")
  print(f"{'devices':>7s}{'layout (chunks x rows x tokens)':>33s}{'worst case prompts/tokens':>27s}"
        f"{'shapes':>7s}{'chunks p50/p90/max':>20s}{'padding':>9s}{'mean/step':>10s}{'host ms p50/p99':>17s}"
        f"{'sized in s':>11s}")
  for d in DEVICES:
    layout, info, sized = r["layouts"][d]
    run = r["runs"][d]
    c = run["chunks"]
    pad = 1 - run["useful"].sum() / run["encoded"].sum()
    per_step = np.mean(1 - run["useful"] / run["encoded"])
    shape = f"{layout.chunks} x {layout.chunk_rows} x {layout.row_tokens}"
    worst = f"{info['most_prompts']:,} / {info['most_tokens']:,}"
    chunks = f"{np.median(c):.0f}/{np.percentile(c, 90):.0f}/{c.max()}"
    host = f"{np.median(run['host_ms']):.2f}/{np.percentile(run['host_ms'], 99):.2f}"
    print(f"{d:7d}{shape:>33s}{worst:>27s}{len(run['shapes']):7d}{chunks:>20s}{100 * pad:8.1f}%"
          f"{100 * per_step:9.1f}%{host:>17s}{sized:11.1f}")
  print("padding = tokens encoded that belong to no prompt / tokens encoded (sum over steps; 'mean/step' averages "
        "each step's share)")


def paper_config(dry, remat_text=None):
  config = hgr_timing.load_hgr_config("demo")   # Embedded data: only its batch layout is used.
  paper = hgr_timing.load_hgr_config(None)
  config.optim = paper.optim
  config.model.remat_text = remat_text or paper.model.remat_text
  config.model.remat_image = paper.model.remat_image
  config.model.conv_impl = "xla"  # GPU stand-in: XLA's convolutions, not the CPU's im2col.
  if dry:
    config.model.name = "custom"
    config.model.custom.update(dict(hgr_timing.TINY_SIZES, image_resolution=32))
  else:
    config.model.name = "RN50"
  config.batch_size = 16 if dry else 256
  config.compute_dtype = "bfloat16"
  config.hgr.out_ratio, config.hgr.in_ratio, config.hgr.sampler = 0.25, 0.5, "topk"
  config.hgr.num_negatives = 16 if dry else 256
  config.hgr.classes_per_step, config.hgr.negatives_from = paper.hgr.classes_per_step, paper.hgr.negatives_from
  config.data.num_threads, config.data.prefetch = 1, 1
  return config


def abstract_batch(eng, local, example):
  """ShapeDtypeStructs of a global batch: the engine's batch layout with the replay's contrasts and prompts."""
  repl_keys = set(eng.trainer.replicated_batch_keys)
  spec = {}
  for key, value in local.items():
    value = np.asarray(example[key] if key in example else value)
    where = sharding.replicated(eng.mesh) if key in repl_keys else sharding.batch_sharding(eng.mesh)
    spec[key] = jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=where)
  return spec


def compile_stats(lowered):
  compiled = lowered.compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  return dict(flops=float(cost.get("flops", float("nan"))), args=mem.argument_size_in_bytes,
              temp=mem.temp_size_in_bytes, out=mem.output_size_in_bytes, alias=mem.alias_size_in_bytes)


def grad_flops(eng, fn, *inputs, input_grads=False):
  """FLOPs of the gradient of sum(fn(clip params, *inputs)) w.r.t. the CLIP params (and, with
  `input_grads`, the floating inputs), on one device."""
  clip_params = eng.abstract_state["params"]["clip"]
  model_state = eng.abstract_state["model_state"]
  floating = [2 + i for i, x in enumerate(inputs) if jnp.issubdtype(x.dtype, jnp.floating)]
  wrt = (0, *floating) if input_grads else 0
  g = jax.grad(lambda p, s, *x: fn({"params": p, **s}, *x).astype(jnp.float32).sum(), argnums=wrt)
  return compile_stats(jax.jit(g).lower(clip_params, model_state, *inputs))["flops"]


def forward_flops(eng, fn, *inputs):
  """FLOPs of fn(clip params, *inputs) on one device."""
  f = lambda p, s, *x: fn({"params": p, **s}, *x)
  return compile_stats(jax.jit(f).lower(eng.abstract_state["params"]["clip"], eng.abstract_state["model_state"],
                                        *inputs))["flops"]


def make_engine(config, workdir, devices, levels, layout):
  eng = engine_lib.Engine(config, workdir, mesh=sharding.make_mesh(dict(data=len(devices), fsdp=1), devices))
  eng.trainer.level_counts = np.ones(levels, np.float32)  # θ sized for the WordNet depths (not the demo's)
  eng.trainer.layout = layout                             # the WordNet layout (not the demo's)
  # Traced, not run: sets eng.tx / abstract_state / state_shardings without allocating the state.
  jax.eval_shape(lambda: eng.build_state(with_optimizer=True))
  return eng


def analyse(eng, local, example, batch_size):
  """Step memory/FLOPs and per-device tower FLOPs of one engine (compiled only)."""
  d = sharding.batch_devices(eng.mesh)
  layout = eng.trainer.layout
  step = compile_stats(eng.make_train_step().lower(eng.abstract_state, abstract_batch(eng, local, example)))
  rows, width = layout.chunk_rows // d, eng.trainer.clip_config.transformer_width
  chunk_inputs = (jax.ShapeDtypeStruct((rows, layout.row_tokens, width), eng.trainer.dtype),
                  jax.ShapeDtypeStruct((rows, layout.row_tokens), jnp.int32),
                  jax.ShapeDtypeStruct((rows, layout.row_slots), jnp.int32))
  features = eng.trainer._packed_features  # pylint: disable=protected-access
  # The step runs a chunk forward, then in the backward pass forward again and backward (packing.chunk_loop).
  chunk = grad_flops(eng, features, *chunk_inputs, input_grads=True) + forward_flops(eng, features, *chunk_inputs)
  res = eng.trainer.clip_config.image_resolution
  image = grad_flops(eng, lambda v, x: eng.trainer.module.apply(v, x, method=clip_lib.CLIP.encode_image),
                     jax.ShapeDtypeStruct((batch_size // d, res, res, 3), jnp.float32))
  return dict(step=step, chunk=chunk, image=image, rest=step["flops"] - chunk)


def print_aot_table(args, cfg, stats, r, batch, ref_text77):
  peak = args.mfu * H100_PEAK
  print(f"\nAOT (compiled, not run): {cfg}, batch {batch} class-pure, bf16 compute, AdamW, text remat "
        f"{stats['remat_text']!r}, image remat {stats['remat_image']!r}; 1 device and an 8-device data-parallel mesh "
        f"(CPU host devices stand in for GPUs); load average {os.getloadavg()[0]:.2f}")
  print(f"Projection: H100 time = FLOPs per device / ({args.mfu:.0%} MFU x 989 TFLOP/s bf16 dense). Memory per "
        f"device: XLA memory_analysis of the compiled step (one shape for every step, sized for the sampler's worst "
        f"case), arguments + temporaries + non-aliased outputs against 72 GB (80 GB less 10 %).")
  print(f"{'devices':>7s}{'args GB':>8s}{'temp GB':>8s}{'need GB':>8s}{'fits72':>7s}{'chunk GF':>9s}  "
        f"{'step':>6s}{'chunks':>7s}{'text TF':>8s}{'image TF':>9s}{'step TF':>8s}{'H100 ms':>8s}{'img/s':>10s}")
  for d in DEVICES:
    s, run = stats[d], r["runs"][d]
    st = s["step"]
    need = st["args"] + st["temp"] + st["out"] - st["alias"]
    head = (f"{d:7d}{st['args'] / 1e9:8.2f}{st['temp'] / 1e9:8.2f}{need / 1e9:8.2f}"
            f"{'yes' if need <= BUDGET else 'NO':>7s}{s['chunk'] / 1e9:9.2f}  ")
    cases = [("p50", np.median(run["chunks"])), ("p90", np.percentile(run["chunks"], 90)),
             ("max", run["chunks"].max()), ("worst", r["layouts"][d][0].chunks)]
    for i, (name, chunks) in enumerate(cases):
      text = s["chunk"] * chunks
      total = s["rest"] + text
      t = total / peak
      print(f"{head if i == 0 else ' ' * len(head)}{name:>6s}{chunks:7.0f}{text / 1e12:8.2f}{s['image'] / 1e12:9.2f}"
            f"{total / 1e12:8.2f}{1e3 * t:8.1f}{batch / t:10.0f}")
  one, eight = r["runs"][1], r["runs"][8]
  ratio = np.median(eight["chunks"] * stats[8]["chunk"] / (one["chunks"] * stats[1]["chunk"]))
  print(f"text-tower FLOPs per device, 8 devices / 1 device (median over the replayed steps): {ratio:.3f} "
        f"(1/{1 / ratio:.1f}; acceptance <= 1/6)")
  ref_prompts = float(np.mean(one["ref"]))
  ref = stats[1]["image"] + ref_text77 * ref_prompts
  print(f"official recipe (per-contrast text tower on 77 tokens): image {stats[1]['image'] / 1e12:.2f} TF + "
        f"{ref_prompts:.0f} prompts (replay mean) x {ref_text77 / 1e9:.2f} GF (77-token fwd+bwd per prompt, from a "
        f"compiled text tower) = {ref / 1e12:.2f} TF per step; 1xH100 at the same MFU "
        f"{1e3 * ref / peak:.1f} ms, {batch / (ref / peak):.0f} img/s")


def run(args):
  dry = args.dry_run
  steps = 40 if dry else args.replay_steps
  with tempfile.TemporaryDirectory() as workdir:
    config = paper_config(dry, args.remat_text)
    probe = engine_lib.Engine(config, workdir, mesh=sharding.make_mesh(dict(data=1, fsdp=1), jax.devices()[:1]))
    if dry:
      h = probe.trainer.hierarchy
      train = np.asarray(h.indices(probe.trainer.index.class_list(config.data.train_classes)), np.int64)
    else:
      h, train = wordnet_hierarchy()
    r = replay(h, train, config.hgr.num_negatives, steps)
    r["source"] = "demo hierarchy" if dry else "WordNet hierarchy"
    describe_replay(r, steps)
    local = hgr_timing.take_batches(probe, 1)[0]
    del probe
    stats = dict(remat_text=config.model.remat_text, remat_image=config.model.remat_image)
    for d in DEVICES:
      t = time.perf_counter()
      eng = make_engine(config, workdir, jax.devices()[:d], r["levels"], r["layouts"][d][0])
      stats[d] = analyse(eng, local, r["runs"][d]["example"], config.batch_size)
      logger.info("%d-device step compiled in %.0f s", d, time.perf_counter() - t)
      if d == 1:
        c = config.hgr.num_negatives + 1
        module = eng.trainer.module
        ref_text77 = grad_flops(eng, lambda v, t, m=module: m.apply(v, t, method=clip_lib.CLIP.encode_text),
                                jax.ShapeDtypeStruct((c, 77), jnp.int32)) / c
    cfg = "tiny CLIP @ 32 px" if dry else "CLIP RN50 @ 224 px"
    print_aot_table(args, cfg, stats, r, config.batch_size, ref_text77)
  return 0
