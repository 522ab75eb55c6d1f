r"""DAZLE on CUB with the official DAZLE_CUB notebook's recipe (uniform sampler, momentum 0.9).

Demo (generated data, ~1 min on a CPU):
  python -m zsl_jax.main --config=configs/dazle_cub.py:demo --workdir=/tmp/dazle_cub_demo
Real data (DAZLE's feature_map_ResNet_101_CUB.hdf5 [+ xlsa17 att_splits.mat] in DIR):
  python -m zsl_jax.main --config=configs/dazle_cub.py --workdir=W --config.data.root=DIR
Reference protocol (model selected on the test set, as the notebooks; labelled test-selected):
  ... --config.zsl.select_on=test_reference
Evaluate a run (or an official DAZLE .pth / import_dazle .npz):
  python -m zsl_jax.main --config=configs/dazle_cub.py --workdir=W --config.mode=eval --config.init.checkpoint=W
"""
from zsl_jax import config_lib
from zsl_jax.projects.attr import config as attr_config


def get_config(arg=None):
  a = config_lib.parse_arg(arg, demo=False)
  return attr_config.dazle_config("CUB", a.demo)
