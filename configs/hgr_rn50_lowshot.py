r"""HGR-Net low-shot fine-tuning (Yi et al., ECCV 2022, supplement Fig. 2): start from the zero-shot model, add
k images per unseen class.

  python -m zsl_jax.main --config=configs/hgr_rn50_lowshot.py:shots=5 --workdir=runs/hgr_ls5 \
      --config.init.checkpoint=runs/hgr_rn50 --config.data.hierarchy=... --config.data.index=...
  python -m zsl_jax.main --config=configs/hgr_rn50_lowshot.py:demo,shots=2 --workdir=/tmp/hgr_ls_demo \
      --config.init.checkpoint=/tmp/hgr_demo

Training images: all seen images plus k of the 10 reserved images of every unseen class (index
split `ls{k}_train`, nested in k); evaluation on the unseen classes' remaining images (`ls_test`).
This is the documented protocol; the released scripts load seen classes only (a difference the README notes).
"""
from zsl_jax import config_lib
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr import config as hgr_rn50

SHOTS = (1, 2, 3, 5, 10)


def get_config(arg=None):
  c = hgr_rn50.hgr_config(arg, shots=5)
  shots = config_lib.parse_arg(arg, demo=False, eval="in21k_d", variant="RN50", shots=5).shots
  if shots not in SHOTS:
    raise UserError(f"shots={shots}; the index holds low-shot splits for k in {SHOTS}, e.g. :demo,shots=2")
  c.data.train_split = f"ls{shots}_train"
  c.data.train_classes = "all"      # seen classes and the unseen classes' k shots
  c.optim.lr = 1e-6
  for ev in c.evals.values():
    ev.split = "ls_test"
  if c.data.demo:
    c.total_steps = 200
    c.optim.lr = 3e-4
  return c
