r"""VSMR on AWA2 (Zhang et al., JEI 2024); recipe notes in zsl_jax/projects/attr/config.py (VSMR_RECIPES).

Demo (generated data, ~1 min on a CPU):
  python -m zsl_jax.main --config=configs/vsmr_awa2.py:demo --workdir=/tmp/vsmr_awa2_demo
Real data (DAZLE's feature_map_ResNet_101_AWA2.hdf5 [+ xlsa17 att_splits.mat] in DIR):
  python -m zsl_jax.main --config=configs/vsmr_awa2.py --workdir=W --config.data.root=DIR
Transductive top-k prototype refinement (the reference's setting; labelled transductive):
  ... --config.vsmr.transductive_refine=True
Evaluate a run:
  python -m zsl_jax.main --config=configs/vsmr_awa2.py --workdir=W --config.mode=eval --config.init.checkpoint=W
"""
from zsl_jax import config_lib
from zsl_jax.projects.attr import config as attr_config


def get_config(arg=None):
  a = config_lib.parse_arg(arg, demo=False)
  return attr_config.vsmr_config("AWA2", a.demo)
