"""Two local processes x 4 CPU devices behave like one process x 8 devices (multi-host in miniature)."""
import json

import jax
import numpy as np
import pytest

from tests import cli
from zsl_jax import metrics

CONFIG = "tests/toy_config.py"


def _launch(workdir, *overrides, check=False):
  return cli.launch_local(2, 4, CONFIG, workdir, *overrides, check=check)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  single = tmp_path_factory.mktemp("single")
  cli.run_main(CONFIG, single)
  multi = tmp_path_factory.mktemp("multi")
  _launch(multi, check=True)
  return single, multi


def _state(workdir):
  from tests import toy_config  # pylint: disable=import-outside-toplevel
  return cli.restore_state(toy_config.get_config(), workdir)


def test_two_processes_match_one_process(runs):
  single, multi = runs
  s1, step1 = _state(single)
  s2, step2 = _state(multi)
  assert step1 == step2 == 12
  for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  t1 = metrics.read_metrics(single, split="train")
  t2 = metrics.read_metrics(multi, split="train")
  assert [r["index_sum"] for r in t1] == [r["index_sum"] for r in t2]  # Same global batches.
  np.testing.assert_allclose([r["loss"] for r in t1], [r["loss"] for r in t2], rtol=1e-6)
  e1 = metrics.read_metrics(single, split="heldout")
  e2 = metrics.read_metrics(multi, split="heldout")
  assert [(r["accuracy"], r["count"]) for r in e1] == [(r["accuracy"], r["count"]) for r in e2]


def test_only_process_zero_writes_metrics(runs):
  _, multi = runs
  lines = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
  keys = [(r["split"], r["step"]) for r in lines]
  assert len(keys) == len(set(keys)) == 13  # 12 train steps + 1 evaluation, each written once.
  assert len(list((multi / "tensorboard").glob("events.out.tfevents.*"))) == 1
  assert "[train]" not in (multi / "logs" / "process_1.log").read_text()


def test_failed_process_stops_the_others(tmp_path):
  proc = _launch(tmp_path, "--config.toy.nan_at_step=3")
  cli.expect_rc(proc, 3)
  assert "at step 3" in (tmp_path / "logs" / "process_0.log").read_text()
