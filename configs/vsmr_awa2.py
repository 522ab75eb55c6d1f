r"""VSMR on AWA2 (dazle_vsmr.md §5; recipe notes in zsl_jax/configs_zsl.py VSMR_RECIPES).

Demo (generated data, ~1 min on a CPU):
  python -m zsl_jax.main --config=configs/vsmr_awa2.py:demo --workdir=/tmp/vsmr_awa2_demo
Real data (DAZLE's feature_map_ResNet_101_AWA2.hdf5 [+ xlsa17 att_splits.mat] in DIR):
  python -m zsl_jax.main --config=configs/vsmr_awa2.py --workdir=W --config.data.root=DIR
Transductive top-k prototype refinement (the reference's setting; labelled transductive):
  ... --config.vsmr.transductive_refine=True
Evaluate a run:
  python -m zsl_jax.main --config=configs/vsmr_awa2.py --workdir=W --config.mode=eval --config.init.checkpoint=W
"""
from zsl_jax.projects.attr import config as configs_zsl


def get_config(arg=None):
  from zsl_jax import config_lib  # pylint: disable=import-outside-toplevel
  a = config_lib.parse_arg(arg, demo=False)
  return configs_zsl.vsmr_config("AWA2", a.demo)
