"""Import an official DAZLE checkpoint (hbdat/cvpr20_DAZLE, PyTorch) into zsl_jax.

`python -m zsl_jax.tools.import_dazle --checkpoint model.pth --hdf5 feature_map_ResNet_101_AWA2.hdf5
--normalize-V --out dazle_awa2.npz` reads the state dict (weights only; torch is imported here only), takes the
seen/unseen classes from the feature file, converts with
`zsl_jax.projects.attr.models.dazle.from_torch_state_dict`, checks the conversion on random features and writes
an `.npz` (params, constants, options). Both the `.pth` and the `.npz` can be given to
`--config.init.checkpoint=` of configs/dazle_*.py (e.g. with `--config.mode=eval`).
"""
import argparse
import json
import sys
import zipfile

import jax
import numpy as np

from zsl_jax import cli
from zsl_jax import paths
from zsl_jax.errors import UserError
from zsl_jax.models import torch_io
from zsl_jax.projects.attr.data import dataset as zsl_dataset
from zsl_jax.projects.attr.models import dazle

OPTION_FLAGS = ("normalize_V", "normalize_F", "is_bias", "uniform_att_1", "uniform_att_2", "is_sigmoid",
                "non_linear_act")


def read_torch_state_dict(path):
  """A state dict from a DAZLE file: an import_dazle `.npz`, or a torch file holding a state dict (bare or
  under 'state_dict' / 'model'), or the whole pickled `DAZLE` model (read weights-only, see `torch_io`)."""
  if str(path).endswith(".npz"):
    return _read_npz(path)
  obj = torch_io.read_torch_file(path, "DAZLE checkpoint", model_classes=("DAZLE",))
  for key in ("state_dict", "model", "model_state_dict"):
    if isinstance(obj, dict) and key in obj:
      obj = obj[key]
  if hasattr(obj, "state_dict") and callable(obj.state_dict):
    obj = obj.state_dict()
  if not isinstance(obj, dict):
    raise UserError(f"{path} holds a {type(obj).__name__}, not a DAZLE state dict; save model.state_dict()")
  return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def _read_npz(path):
  """The params (and att) of an import_dazle `.npz`; never unpickles (allow_pickle stays False)."""
  try:
    loaded, arrays = np.load(path), {}
    if isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file gives an array instead
      with loaded:
        arrays = {k: loaded[k] for k in loaded.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{path} is not a readable .npz file ({type(e).__name__}); the DAZLE checkpoint is truncated, "
                    f"corrupt or of another format: pass an import_dazle .npz or the official DAZLE .pth") from None
  params = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("params/")}
  if not params:
    raise UserError(f"{path} holds no params/ arrays: not an .npz written by zsl_jax.tools.import_dazle; pass that "
                    f"file or the official DAZLE .pth")
  return params | ({"att": arrays["constants/att"]} if "constants/att" in arrays else {})


def convert(state_dict, seen_classes, unseen_classes, check=True, **options):
  """from_torch_state_dict plus a finiteness check of the scores on random non-negative features."""
  module, variables = dazle.from_torch_state_dict(state_dict, seen_classes=seen_classes,
                                                  unseen_classes=unseen_classes, **options)
  if check:
    x = np.abs(np.random.default_rng(0).standard_normal((2, 49, module.feature_dim))).astype(np.float32)
    out = module.apply(variables, x)
    if not np.isfinite(np.asarray(out["scores"])).all():
      raise UserError("the converted model gives non-finite scores; the checkpoint is damaged")
  return module, jax.device_get(variables)


def save_npz(path, variables, options):
  paths.make_parent(path)
  arrays = {f"{col}/{k}": np.asarray(v) for col in ("params", "constants") for k, v in variables[col].items()}
  np.savez(path, options=json.dumps(options), **arrays)


def _parser():
  p = cli.ArgumentParser("import_dazle", description=__doc__)
  p.add_argument("--checkpoint", required=True, help="official DAZLE .pth/.pt (a state dict or a saved model)")
  p.add_argument("--hdf5", default=None, help="DAZLE feature file of the dataset: seen/unseen classes come from "
                 "its trainval_loc/test_unseen_loc and labels")
  p.add_argument("--att-splits", default=None, help="xlsa17 att_splits.mat + --res101, instead of --hdf5")
  p.add_argument("--res101", default=None, help="xlsa17 res101.mat (per-image labels), with --att-splits")
  p.add_argument("--dataset", default="AWA2", help="AWA2, CUB or SUN (for the readers' conventions)")
  p.add_argument("--out", required=True, help="output .npz (params, constants, options)")
  for flag in OPTION_FLAGS:
    p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, action=argparse.BooleanOptionalAction,
                   default=flag in ("normalize_F", "is_bias"),
                   help=f"the official constructor's {flag} the model was trained with")
  return p


def _run(args):
  paths.check_writable_file(args.out, "--out")
  if args.hdf5 is None and (args.att_splits is None or args.res101 is None):
    raise UserError("pass --hdf5, or --att-splits with --res101, to know the seen and unseen classes")
  sd = read_torch_state_dict(args.checkpoint)  # first: a file that is no DAZLE checkpoint fails at once
  ds = zsl_dataset.load_zsl_dataset(args.dataset, hdf5=args.hdf5, att_splits=args.att_splits, res101=args.res101)
  options = {f: getattr(args, f) for f in OPTION_FLAGS}
  module, variables = convert(sd, ds.seen_classes, ds.unseen_classes, att=None if "att" in sd else ds.att,
                              **options)
  save_npz(args.out, variables, options)
  print(f"wrote {args.out}: {module.num_attributes} attributes, {module.feature_dim}-d features, "
        f"{len(ds.seen_classes)} seen / {len(ds.unseen_classes)} unseen classes")


def main(argv=None):
  return cli.run_command("import_dazle", _run, _parser().parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
