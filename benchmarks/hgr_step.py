"""HGR-Net train step: zsl_jax (one deduplicated, truncated text-tower call) vs the reference recipe.

The reference re-runs CLIP's text tower for every (outer anchor, inner level) contrast on
77-token prompts; zsl_jax encodes each step's unique prompts once, cut after the last EOT. This
script times one optimisation step of both on the same machine with the same shapes (CLIP RN50,
random weights, a synthetic hierarchy as deep as ImageNet-21K's), reports the text-tower work
each one does (XLA's FLOP count for our call; tokens for both), and prints the ratio.

Paper shapes are B = 256 images, 256 negatives and up to 13 contrasts per step at 224 px (a
GPU's work); the defaults are scaled down so that the torch side finishes on a 2-core CPU, and
the table says which shapes ran. On a GPU add --mfu to print model FLOP utilisation.

  python benchmarks/hgr_step.py                       # CPU-sized defaults
  python benchmarks/hgr_step.py --batch 256 --negatives 256 --iters 10 --mfu   # paper shapes (GPU)
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def synthetic_hierarchy(depth=9, branching=4, seed=0):
  """A tree with ImageNet-21K-like depth (paths of `depth` levels); returns sampler inputs."""
  rng = np.random.default_rng(seed)
  parent, level = [-1] * branching, [0] * branching
  frontier = list(range(branching))
  for d in range(1, depth):
    nxt = []
    for p in frontier:
      for _ in range(int(rng.integers(2, branching + 1))):
        parent.append(p)
        level.append(d)
        nxt.append(len(parent) - 1)
    frontier = [int(x) for x in rng.choice(nxt, min(len(nxt), 60), replace=False)]
  n = len(parent)
  paths = np.full((n, depth), -1, np.int32)
  for i in range(n):
    chain, j = [], i
    while j >= 0:
      chain.append(j)
      j = parent[j]
    paths[i, :len(chain)] = chain[::-1]
  children = [[] for _ in range(n)]
  for i, p in enumerate(parent):
    if p >= 0:
      children[p].append(i)
  return paths, np.asarray(level, np.int32), children, np.arange(branching)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch", type=int, default=4, help="images per step (paper: 256)")
  ap.add_argument("--negatives", type=int, default=16, help="negatives per contrast (paper: 256)")
  ap.add_argument("--resolution", type=int, default=224)
  ap.add_argument("--out_ratio", type=float, default=0.25)
  ap.add_argument("--in_ratio", type=float, default=0.5)
  ap.add_argument("--iters", type=int, default=2, help="timed steps per side (after one warm-up step)")
  ap.add_argument("--skip_torch", action="store_true")
  ap.add_argument("--mfu", action="store_true", help="also print MFU (needs a GPU/TPU peak FLOP/s)")
  ap.add_argument("--peak_tflops", type=float, default=0.0, help="peak dense bf16 TFLOP/s for --mfu")
  args = ap.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import optax

  from zsl_jax.models import clip as clip_lib
  from zsl_jax.projects.hgr import loss as hgr
  from zsl_jax.projects.hgr import negatives as hgr_negatives
  from zsl_jax.text import tokenize
  from zsl_jax.text import truncate_tokens

  paths, depth, children, roots = synthetic_hierarchy()
  names = [f"synthetic class number {i} of the benchmark" for i in range(len(depth))]
  tokens = tokenize([f"a photo of a {n}." for n in names])
  sampler = hgr_negatives.ContrastSampler(paths, depth, children, roots, out_ratio=args.out_ratio, in_ratio=args.in_ratio,
                                num_negatives=args.negatives)
  leaves = np.flatnonzero(depth == depth.max())
  rng = np.random.default_rng(0)
  counts = np.bincount(depth).astype(np.float32)

  config = clip_lib.get_config("RN50")
  if args.resolution != config.image_resolution:
    import dataclasses  # pylint: disable=import-outside-toplevel
    config = dataclasses.replace(config, image_resolution=args.resolution)
  module = clip_lib.CLIP(config, jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32)
  variables = clip_lib.init_variables(config, jax.random.PRNGKey(0))
  params = {"clip": variables["params"], "theta": hgr.init_theta(counts)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-7, weight_decay=0.0))
  opt_state = tx.init(params)
  images = jnp.asarray(rng.normal(size=(args.batch, args.resolution, args.resolution, 3)), jnp.float32)

  def step_inputs(step):
    c = sampler.sample(int(leaves[step % len(leaves)]), np.random.default_rng(step))
    unique, columns, n = hgr_negatives.dedupe_prompts(c.node_ids, multiple=64)
    prompt_tokens = truncate_tokens(tokens[unique])
    return c, prompt_tokens, columns, n

  def loss_fn(p, prompt_tokens, contrasts):
    v = {"params": p["clip"], "batch_stats": variables["batch_stats"]}
    img = module.apply(v, images, method=clip_lib.CLIP.encode_image)
    txt = module.apply(v, prompt_tokens, method=clip_lib.CLIP.encode_text)
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    w = hgr.contrast_weights("adaptive", contrasts, p["theta"], counts)
    return hgr.om_loss(img, txt, contrasts["columns"], w, p["clip"]["logit_scale"])[0]

  @jax.jit
  def train_step(p, o, prompt_tokens, contrasts):
    loss, g = jax.value_and_grad(loss_fn)(p, prompt_tokens, contrasts)
    upd, o = tx.update(g, o, p)
    return optax.apply_updates(p, upd), o, loss

  def jax_args(step):
    c, pt, columns, n = step_inputs(step)
    contrasts = {k: jnp.asarray(v) for k, v in vars(c).items()}
    contrasts["columns"] = jnp.asarray(columns)
    return jnp.asarray(pt), contrasts, c, n

  pt, contrasts, c0, n0 = jax_args(0)
  t = time.time()
  params, opt_state, loss = train_step(params, opt_state, pt, contrasts)
  jax.block_until_ready(loss)
  compile_s = time.time() - t
  times = []
  for i in range(1, args.iters + 1):
    pt, contrasts, c, n = jax_args(0)  # Same shapes as the warm-up: steady-state timing.
    t = time.time()
    params, opt_state, loss = train_step(params, opt_state, pt, contrasts)
    jax.block_until_ready(loss)
    times.append(time.time() - t)
  groups = int(c0.group_mask.sum())
  ref_prompts = int((c0.node_ids[c0.group_mask] >= 0).sum())
  enc = jax.jit(lambda v, tk: module.apply(v, tk, method=clip_lib.CLIP.encode_text))
  text_vars = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  def text_flops(shape):
    cost = enc.lower(text_vars, jax.ShapeDtypeStruct(shape, jnp.int32)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))
  ours_text = text_flops(pt.shape)
  ref_text = text_flops((ref_prompts, 77))
  jax_step = float(np.median(times))

  torch_step = float("nan")
  if not args.skip_torch:
    import torch  # pylint: disable=import-outside-toplevel

    from zsl_jax.models.torch_io import import_open_clip  # pylint: disable=import-outside-toplevel
    ref = import_open_clip().create_model("RN50-quickgelu", force_image_size=args.resolution).eval()
    theta = torch.tensor(np.asarray(hgr.init_theta(counts)), requires_grad=True)
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-7, weight_decay=0.0)
    x = torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())
    tok = torch.from_numpy(tokens.astype(np.int64))

    def torch_step_fn(c):
      # The reference: image features once, the text tower per contrast, 77 tokens each.
      opt.zero_grad()
      f = torch.nn.functional.normalize(ref.encode_image(x), dim=-1)
      total = 0.0
      for g in np.flatnonzero(c.group_mask):
        cols = [int(v) for v in c.node_ids[g][1:] if v >= 0] + [int(c.node_ids[g][0])]
        t_feat = torch.nn.functional.normalize(ref.encode_text(tok[cols]), dim=-1)
        z = ref.logit_scale.exp() * f @ t_feat.T
        w = torch.softmax(100.0 ** theta[:1], 0)[0]  # Weight arithmetic is negligible either way.
        total = total + w * torch.nn.functional.cross_entropy(z, torch.full((f.shape[0],), len(cols) - 1))
      total.backward()
      torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
      opt.step()

    torch_step_fn(c0)
    ttimes = []
    for _ in range(args.iters):
      t = time.time()
      torch_step_fn(c0)
      ttimes.append(time.time() - t)
    torch_step = float(np.median(ttimes))

  device = f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}, {os.cpu_count()} host cores"
  print(f"\nHGR-Net step, CLIP RN50 (random weights), {device}")
  scaled = args.batch != 256 or args.negatives != 256
  print(f"shapes: batch {args.batch} @ {args.resolution}px, {groups} contrasts x <= {args.negatives + 1} prompts "
        f"(K={args.out_ratio}, M={args.in_ratio}){'  [scaled down from the paper: 256 images, 256 negatives]' if scaled else ''}")
  print(f"{'':34s}{'zsl_jax':>14s}{'reference (torch)':>20s}{'ratio':>8s}")
  print(f"{'step time (s)':34s}{jax_step:14.3f}{torch_step:20.3f}{torch_step / jax_step:8.2f}x")
  print(f"{'text sequences encoded':34s}{n0:14d}{ref_prompts:20d}{ref_prompts / n0:8.2f}x")
  print(f"{'text tokens per sequence':34s}{pt.shape[1]:14d}{77:20d}")
  print(f"{'text-tower forward GFLOPs':34s}{ours_text / 1e9:14.1f}{ref_text / 1e9:20.1f}{ref_text / ours_text:8.2f}x")
  print(f"(zsl_jax pads {n0} unique prompts to {pt.shape[0]}; compile of the jitted step {compile_s:.1f} s)")
  if args.mfu:
    step_cost = train_step.lower(params, opt_state, pt, contrasts).compile().cost_analysis()
    step_cost = step_cost[0] if isinstance(step_cost, (list, tuple)) else step_cost
    flops = float(step_cost.get("flops", float("nan")))
    if args.peak_tflops > 0:
      print(f"MFU: {flops / jax_step / (args.peak_tflops * 1e12):.1%} ({flops / 1e12:.2f} TFLOP per step)")
    else:
      print(f"{flops / jax_step / 1e12:.2f} TFLOP/s achieved; pass --peak_tflops for MFU")
  return 0


if __name__ == "__main__":
  sys.exit(main())
