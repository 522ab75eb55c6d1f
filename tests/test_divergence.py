"""Divergence cannot pass as success, through the real command line (zsl_jax.train_loop).

With `optim.lr=1e30` the toy's parameters overflow at the first step while its loss stays finite:
the run exits 3 having saved nothing, and a re-run with the recipe's learning rate, in the same
workdir, trains to the end. When the learning rate blows up later (a linear schedule rising to 1e30
after the warmup), the state after the blow-up is never saved: the run exits 3 naming the last
checkpoint, whose parameters are finite, and a re-run with a sane schedule resumes from it.
"""
import json

import jax
import numpy as np

from tests import cli
from tests import toy_config
from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import metrics

CONFIG = "tests/toy_config.py"


def _diverged(proc):
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return proc.stderr.strip().splitlines()[-1]


def _finished(workdir):
  heldout = metrics.read_metrics(workdir, split="heldout")
  assert [r["step"] for r in heldout] == [12] and heldout[0]["accuracy"] > 0.5, heldout


def test_lr_1e30_exits_3_and_a_sane_rerun_finishes(tmp_path):
  proc = cli.run_main(CONFIG, tmp_path, "--config.optim.lr=1e30", check=False)
  line = _diverged(proc)
  assert "diverged at step 1 (param_norm=inf)" in line and "nothing was saved" in line, line
  assert ckpt_lib.complete_steps(tmp_path / "checkpoints") == []
  last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["split"] == "diverged" and last["last_checkpoint"] == -1
  train = metrics.read_metrics(tmp_path, split="train")
  assert train[0]["loss"] < 10 and train[0]["param_norm"] == "inf"  # a finite loss did not hide it
  cli.run_main(CONFIG, tmp_path)  # the recipe's lr: accepted in this workdir after a divergence
  _finished(tmp_path)


def test_only_finite_states_are_saved_and_the_rerun_resumes_from_the_last_one(tmp_path):
  # lr: 2 warmup steps, then linear from 0.03 to 0.03 * 1e32 over 10 steps (3e29 at the 4th update).
  ramp = ("--config.optim.schedule.type=linear", "--config.optim.schedule.end_factor=1e32")
  proc = cli.run_main(CONFIG, tmp_path, "--config.checkpoint.every_steps=2", *ramp, check=False)
  line = _diverged(proc)
  assert "diverged at step 4 (param_norm=inf)" in line and "last good checkpoint: step 2" in line, line
  assert ckpt_lib.complete_steps(tmp_path / "checkpoints") == [2]  # the overflowed step 4 was not saved
  state, step = cli.restore_state(toy_config.get_config(), tmp_path)
  assert step == 2 and all(np.isfinite(x).all() for x in jax.tree.leaves(state))

  proc = cli.run_main(CONFIG, tmp_path, "--config.checkpoint.every_steps=2")  # optim.schedule.* may change now
  assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
  _finished(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["optim"]["schedule"]["type"] == "cosine"
  assert json.loads((tmp_path / "config.1.json").read_text())["optim"]["schedule"]["type"] == "linear"
