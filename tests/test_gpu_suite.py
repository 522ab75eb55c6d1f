"""benchmarks/gpu_suite.sh --dry-run and benchmarks/scale_21k.py --dry-run: the GPU suite's path, on CPU.

The suite runs once (module fixture) at toy sizes; the tests check that every row of its table and
of the rehearsal table is there with sane figures, not how fast anything ran.
"""
import json
import os
import pathlib
import re

import pytest

from tests import cli
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import wordnet

REPO = pathlib.Path(__file__).resolve().parents[1]
SUITE_ROWS = ("hgr_rn50_step", "eval_21k_d", "dazle_awa2_full", "loader", "dazle_input")
SCALE_ROWS = ("make_splits files/s", "index size on disk", "host ms/step (sampling+dedupe+tokens)",
              "unique prompts/step", "compiled prompt shapes", "text tokens encoded per useful token",
              "data-wait fraction",
              "engine step", "eval prompts encoded once", "eval images/s", "eval peak host memory")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suite(tmp_path_factory, shared_data):
  """(stdout, output folder) of one `gpu_suite.sh --dry-run` on one CPU device."""
  if not (shared_data / "imagenet" / "winter_2021.txt").exists():
    pytest.skip("../shared/data/imagenet (WordNet hierarchy inputs) is absent")
  try:
    wordnet.find_wordnet()
  except UserError:
    pytest.skip("WordNet 3.0 is not installed (apt-get install wordnet-base)")
  out = tmp_path_factory.mktemp("suite")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One device, as the GPU machine.
  env.update(ZSL_SUITE_DIR=str(out), JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(pathlib.Path.home() / ".cache" / "zsl_jax_test_xla"))
  proc = cli.run(["bash", REPO / "benchmarks" / "gpu_suite.sh", "--dry-run"], cwd=REPO, env=env, watch=[out])
  if proc.returncode != 0:
    errs = "\n".join(f"--- last lines of {p}\n" + "\n".join(p.read_text().splitlines()[-cli.TAIL:])
                     for p in sorted(out.glob("*.err")))
    pytest.fail(f"gpu_suite.sh --dry-run exited {proc.returncode}; last output:\n{cli.tail(proc)}\n{errs}",
                pytrace=False)
  return proc.stdout, out


def test_gpu_suite_prints_every_row(suite):
  stdout, _ = suite
  rows = dict(re.findall(r"^\| (\S+) +\| (.+) \|$", stdout, re.M))
  assert set(SUITE_ROWS) <= set(rows), stdout
  assert re.search(r"[\d.]+ ms/step", rows["hgr_rn50_step"]), rows["hgr_rn50_step"]
  assert re.search(r"[\d,]+ images/s \(", rows["eval_21k_d"]), rows["eval_21k_d"]
  assert re.search(r"s wall for 20 steps", rows["dazle_awa2_full"]), rows["dazle_awa2_full"]
  assert re.search(r"[\d,]+ images/s with", rows["loader"]), rows["loader"]
  assert re.search(r"official memory [\d,]+ rows/s; official chunk-aware, cache holds split [\d,]+ rows/s; "
                   r"zsl_jax memory [\d,]+ rows/s; zsl_jax chunk-aware, cache holds split [\d,]+ rows/s; "
                   r"converted \.npy memmap [\d,]+ rows/s", rows["dazle_input"]), rows["dazle_input"]


def test_scale_21k_dry_run_table(suite):
  _, out = suite
  table = (out / "scale.log").read_text()
  for row in SCALE_ROWS:
    assert f"| {row} " in table, (row, table)
  s = json.loads((out / "scale.json").read_text())
  assert s["sizes"]["classes"] == 300 and s["sizes"]["indexed"] > 0
  assert s["host"]["padding"] >= 1.0 and 1 <= len(s["host"]["shapes"]) <= 8  # Packed prompts: few shapes.
  assert 0.0 <= s["train"]["measured"] <= 1.0 and s["train"]["steps_timed"] >= 3  # device prefetch reads ahead
  assert s["train"]["logged"] is None or 0.0 <= s["train"]["logged"] <= 1.0
  ev = s["eval"]
  assert ev["prompts"] == 300 and ev["prompt_rows"] >= 300  # Every class's prompt, encoded once.
  assert ev["classes"] == s["sizes"]["rest"] and ev["images"] == 2 * s["sizes"]["rest"]
  assert ev["maxrss_mb"] > 0
