"""CLIP encoding throughput on CPU: zsl_jax (Flax, jit) vs open_clip (torch), same random weights.

  python benchmarks/clip_encode.py --model RN50 --image-batch 16 --text-batch 256 --iters 5

Both sides run on this machine's CPU. The open_clip model (quickgelu variant = OpenAI
architecture) is built with random weights and converted through `zsl_jax.models.clip.load`, so
both encode with identical parameters (the script checks the features agree). Text is timed twice
for zsl_jax: padded to 77 tokens like open_clip, and truncated after the batch's last EOT (what
`LoadedCLIP.encode_text` and the zero-shot builder do). Prompts are the 80 OpenAI templates over
ImageNet-style class names. Timings exclude the first (compiling) call.
"""
import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from zsl_jax.models import clip as clip_lib  # pylint: disable=wrong-import-position
from zsl_jax.models.torch_io import import_open_clip  # pylint: disable=wrong-import-position
from zsl_jax.text import templates  # pylint: disable=wrong-import-position
from zsl_jax.text import tokenize  # pylint: disable=wrong-import-position

CLASSES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray",
           "stingray", "rooster", "hen", "ostrich", "brambling", "goldfinch", "house finch", "junco",
           "indigo bunting", "American robin", "bulbul", "jay", "magpie", "chickadee"]


def parse_args():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="RN50", help="OpenAI architecture name (RN50, RN101, ViT-B/32, ...)")
  p.add_argument("--image-batch", type=int, default=16, help="images per encode_image call")
  p.add_argument("--text-batch", type=int, default=256, help="prompts per encode_text call")
  p.add_argument("--iters", type=int, default=5, help="timed calls per measurement (after one warm-up call)")
  p.add_argument("--bf16", action="store_true", help="also time the zsl_jax bfloat16 compute path")
  return p.parse_args()


def _rate(fn, n_items, iters):
  fn()  # compile / warm up
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return n_items * iters / (time.perf_counter() - start)


def main():
  args = parse_args()
  oc = import_open_clip()
  import torch  # pylint: disable=import-outside-toplevel
  name = args.model.replace("/", "-").replace("@336px", "-336") + "-quickgelu"
  torch.manual_seed(0)
  ref = oc.create_model(name).eval()
  ours = clip_lib.load(ref.state_dict())
  res = ours.config.image_resolution
  images = np.random.RandomState(0).randn(args.image_batch, res, res, 3).astype(np.float32)
  images_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  prompts = [t.format(c) for c in CLASSES for t in templates.OPENAI_IMAGENET_TEMPLATES]
  tokens = tokenize((prompts * (args.text_batch // len(prompts) + 1))[:args.text_batch])  # [B, 77]
  tokens_t = torch.from_numpy(tokens).long()

  with torch.no_grad():
    want = ref.encode_image(images_t[:2]).numpy()
  got = np.asarray(ours.encode_image(images[:2]))
  rel = float(np.abs(got - want).max() / np.abs(want).max())

  rows = []
  with torch.no_grad():
    t_img = _rate(lambda: ref.encode_image(images_t), args.image_batch, args.iters)
    t_txt = _rate(lambda: ref.encode_text(tokens_t), args.text_batch, args.iters)
  j_img = _rate(lambda: ours.encode_image(images).block_until_ready(), args.image_batch, args.iters)
  j_full = _rate(lambda: ours.encode_text(tokens, truncate=False).block_until_ready(), args.text_batch, args.iters)
  j_trunc = _rate(lambda: ours.encode_text(tokens).block_until_ready(), args.text_batch, args.iters)
  rows += [("images/s", j_img, t_img), ("prompts/s (77 tokens)", j_full, t_txt),
           (f"prompts/s (truncated to {_len(tokens)})", j_trunc, t_txt)]
  if args.bf16:
    fast = clip_lib.LoadedCLIP(ours.config, ours.variables, dtype=jnp.bfloat16)
    rows += [("images/s bf16", _rate(lambda: fast.encode_image(images).block_until_ready(), args.image_batch,
                                     args.iters), t_img),
             ("prompts/s bf16 (truncated)", _rate(lambda: fast.encode_text(tokens).block_until_ready(),
                                                  args.text_batch, args.iters), t_txt)]

  print(f"CLIP {args.model} encode throughput on CPU ({os.cpu_count()} cores visible, torch threads "
        f"{torch.get_num_threads()}, jax {jax.__version__} on {jax.devices()[0].platform}); "
        f"image batch {args.image_batch}, text batch {args.text_batch}, {args.iters} timed calls; "
        f"feature max rel. diff {rel:.1e}")
  print(f"| {'measure':<30} | {'zsl_jax':>10} | {'open_clip':>10} | {'ratio':>6} |")
  print(f"|{'-' * 32}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
  for label, j, t in rows:
    print(f"| {label:<30} | {j:>10.1f} | {t:>10.1f} | {j / t:>5.2f}x |")


def _len(tokens):
  from zsl_jax.text import truncate_tokens  # pylint: disable=import-outside-toplevel
  return truncate_tokens(tokens).shape[1]


if __name__ == "__main__":
  main()
