r"""DAZLE on SUN with the official DAZLE_SUN notebook's recipe (no attention over attributes, β ≡ 1; 100 epochs).

Demo (generated data, ~1 min on a CPU):
  python -m zsl_jax.main --config=configs/dazle_sun.py:demo --workdir=/tmp/dazle_sun_demo
Real data (DAZLE's feature_map_ResNet_101_SUN.hdf5 [+ xlsa17 att_splits.mat] in DIR):
  python -m zsl_jax.main --config=configs/dazle_sun.py --workdir=W --config.data.root=DIR
Reference protocol (model selected on the test set, as the notebooks; labelled test-selected):
  ... --config.zsl.select_on=test_reference
Evaluate a run (or an official DAZLE .pth / import_dazle .npz):
  python -m zsl_jax.main --config=configs/dazle_sun.py --workdir=W --config.mode=eval --config.init.checkpoint=W
"""
from zsl_jax import config_lib
from zsl_jax.projects.attr import config as attr_config


def get_config(arg=None):
  a = config_lib.parse_arg(arg, demo=False)
  return attr_config.dazle_config("SUN", a.demo)
