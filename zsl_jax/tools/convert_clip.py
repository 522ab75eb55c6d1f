"""Converts a CLIP checkpoint (OpenAI .pt, open_clip .pt/.bin/.safetensors, HGR-Net clip_<epoch>)
into an Orbax checkpoint that `zsl_jax.models.clip.load(OUT)` reads without torch.

  python -m zsl_jax.tools.convert_clip RN50.pt ~/ckpt/clip_rn50

torch is needed only here, and only for torch pickles/archives.
"""
import os
import sys

from zsl_jax import cli
from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.models import clip as clip_lib
from zsl_jax.models.clip import convert as clip_convert


def parse_args(argv):
  p = cli.ArgumentParser("convert_clip", description=__doc__)
  p.add_argument("input", help="checkpoint file: OpenAI TorchScript .pt, open_clip .pt/.bin/.safetensors (plain "
                 "or training checkpoint with 'state_dict'), or an HGR-Net clip_<epoch> state dict "
                 "(fp16 and 'module.' prefixes are handled); the architecture is inferred from shapes")
  p.add_argument("output", help="output directory; receives clip_config.json and the Orbax checkpoint "
                 "'variables/' ({'params', 'batch_stats'}, float32)")
  p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it already exists")
  return p.parse_args(argv)


def convert(input_path, output_dir, overwrite=False):
  """Converts and writes; returns the CLIPConfig."""
  paths.check_writable_dir(output_dir, "OUTPUT")
  if os.path.exists(os.path.join(output_dir, clip_lib.CONFIG_FILE)) and not overwrite:
    raise UserError(f"{output_dir} already holds a converted CLIP; pass --overwrite or choose another OUTPUT")
  config, variables = clip_convert.convert(input_path)
  clip_lib.save_converted(output_dir, config, variables)
  return config


def _run(args):
  config = convert(args.input, args.output, args.overwrite)
  name = clip_lib.preset_name(config) or "custom"
  print(f"wrote {args.output}: CLIP {name} ({clip_lib.count_params(config):,} parameters)")


def main(argv=None):
  return cli.run_command("convert_clip", _run, parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
