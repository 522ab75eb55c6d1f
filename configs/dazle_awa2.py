r"""DAZLE on AWA2 (Huynh & Elhamifar, CVPR 2020) with the official DAZLE_AWA2 notebook's recipe.

Demo (generated data, ~1 min on a CPU):
  python -m zsl_jax.main --config=configs/dazle_awa2.py:demo --workdir=/tmp/dazle_awa2_demo
Real data (DAZLE's feature_map_ResNet_101_AWA2.hdf5 [+ xlsa17 att_splits.mat] in DIR):
  python -m zsl_jax.main --config=configs/dazle_awa2.py --workdir=W --config.data.root=DIR
Reference protocol (model selected on the test set, as the notebooks; labelled test-selected):
  ... --config.zsl.select_on=test_reference
Evaluate a run (or an official DAZLE .pth / import_dazle .npz):
  python -m zsl_jax.main --config=configs/dazle_awa2.py --workdir=W --config.mode=eval --config.init.checkpoint=W
"""
from zsl_jax import config_lib
from zsl_jax.projects.attr import config as attr_config


def get_config(arg=None):
  a = config_lib.parse_arg(arg, demo=False)
  return attr_config.dazle_config("AWA2", a.demo)
