r"""VSMR on SUN (no reference script: AWA2's settings with CUB's encoder size and top-k; see VSMR_RECIPES).

Demo (generated data, ~1 min on a CPU):
  python -m zsl_jax.main --config=configs/vsmr_sun.py:demo --workdir=/tmp/vsmr_sun_demo
Real data (DAZLE's feature_map_ResNet_101_SUN.hdf5 [+ xlsa17 att_splits.mat] in DIR):
  python -m zsl_jax.main --config=configs/vsmr_sun.py --workdir=W --config.data.root=DIR
Transductive top-k prototype refinement (the reference's setting; labelled transductive):
  ... --config.vsmr.transductive_refine=True
Evaluate a run:
  python -m zsl_jax.main --config=configs/vsmr_sun.py --workdir=W --config.mode=eval --config.init.checkpoint=W
"""
from zsl_jax import config_lib
from zsl_jax.projects.attr import config as attr_config


def get_config(arg=None):
  a = config_lib.parse_arg(arg, demo=False)
  return attr_config.vsmr_config("SUN", a.demo)
