"""The benchmark scripts run end to end at toy sizes (--dry-run) and print their tables.

One section per script. They run as subprocesses: each script sets its own XLA / OpenMP thread
limits before importing jax or torch, which an in-process call could not do.
"""
from concurrent import futures
import os
import pathlib
import re
import sys

import pytest

from tests import cli

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_script(*args, core=None):
  """The script's stdout; `core`: the CPU it runs on (the scripts pin themselves to the first CPU they may use)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # The script sets its own.
  pin = [] if core is None else ["-c", f"import os, sys; os.sched_setaffinity(0, {{{core}}}); "
                                       "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"]
  return cli.run([sys.executable, *pin, *args], cwd=REPO, env=env, check=True).stdout


def numbers(line):
  return [float(v) for v in re.findall(r"(?<![\w.])-?\d+\.\d+(?![\w.])", line)]


# ------------------------------------------------------------------ benchmarks/hgr_step.py
@pytest.fixture(scope="module")
def hgr_step_outputs():
  """Both dry runs of hgr_step.py at once, on two CPUs where there are two: each script limits itself to one
  thread, so in turn they would leave a core idle for about 3 minutes."""
  cpus = sorted(os.sched_getaffinity(0))
  runs = {"side_by_side": ("--dry-run", "--breakdown"), "aot": ("--aot", "--dry-run")}
  with futures.ThreadPoolExecutor(len(runs)) as pool:
    jobs = {name: pool.submit(run_script, "benchmarks/hgr_step.py", *args, core=cpus[i % len(cpus)])
            for i, (name, args) in enumerate(runs.items())}
    return {name: job.result() for name, job in jobs.items()}


@pytest.mark.slow
def test_hgr_step_dry_run_prints_side_by_side_table(hgr_step_outputs):
  out = hgr_step_outputs["side_by_side"]
  rows = {name: next((line for line in out.splitlines() if line.startswith(name)), None)
          for name in ("zsl_jax engine step", "official recipe (torch")}
  assert all(rows.values()), out
  for name, line in rows.items():
    cpu, wall, ratio = numbers(line)[:3]
    assert cpu > 0 and wall > 0, line
    assert ratio <= 1.3, f"{name}: CPU time {cpu} s over wall {wall} s breaks the 1-thread limit"
  m = re.search(r"encodes (\d+) unique prompts \((\d+) tokens\) packed into (\d+) rows x 64 tokens \((\d+)% padding\)",
                out)
  assert m and 0 < int(m[2]) <= 64 * int(m[3]) and int(m[4]) < 100, out
  assert re.search(r"\s1x64\s*$|\s\d+x64\s*$", rows["zsl_jax engine step"]), rows  # One compiled prompt shape.
  ratios = [line for line in out.splitlines() if line.startswith("ratio ")]
  assert len(ratios) == 1 and "algorithm + framework" in ratios[0], out
  parts = [line for line in out.splitlines() if line.strip().startswith("part:")]
  assert len(parts) == 4 and all(numbers(line)[-1] > 0 for line in parts), out


@pytest.mark.slow
def test_hgr_step_aot_dry_run_prints_layout_and_memory_tables(hgr_step_outputs):
  out = hgr_step_outputs["aot"]
  assert "Sampler replay: the trainer's AddContrasts" in out and "Projection: H100 time" in out, out
  lines = out.splitlines()
  head = next(i for i, line in enumerate(lines) if line.strip().startswith("devices") and "shapes" in line)
  for line, devices in zip(lines[head + 1:head + 3], (1, 8)):
    row = line.split()  # devices, "C x R x T", "prompts / tokens", shapes, chunks, padding, ...
    assert int(row[0]) == devices and row[9] == "1", line  # One compiled prompt shape for every step.
    assert 0 <= float(row[11].rstrip("%")) < 100, line
  head = next(i for i, line in enumerate(lines) if line.strip().startswith("devices") and "fits72" in line)
  row = lines[head + 1].split()
  assert row[0] == "1" and row[4] in ("yes", "NO") and row[6] == "p50", lines[head + 1]
  text_tf, image_tf, step_tf = (float(v) for v in row[8:11])
  assert step_tf >= text_tf >= 0 and step_tf >= image_tf >= 0
  assert re.search(r"text-tower FLOPs per device, 8 devices / 1 device .*: \d+\.\d+ ", out), out
  assert re.search(r"official recipe .* = \d+\.\d+ TF per step", out), out


# ------------------------------------------------------------------ benchmarks/dazle_step.py
def test_dazle_step_dry_run_prints_side_by_side_table():
  out = run_script("benchmarks/dazle_step.py", "--dry-run")
  lines = out.splitlines()
  assert any(line.startswith("threads: 1 per side") and "OMP_WAIT_POLICY=PASSIVE" in line for line in lines), out
  rows = {name: next((line for line in lines if line.startswith(name)), None)
          for name in ("zsl_jax (Engine.make_train_step)", "official DAZLE step (torch)")}
  assert all(rows.values()), out
  for line in rows.values():
    step_ms, cpu_ms, cpu_per_wall, loss = numbers(line)[-4:]
    assert step_ms > 0 and cpu_ms > 0 and 0 < cpu_per_wall <= 1.3 and loss > 0, line
  ratio = next(line for line in lines if line.startswith("ratio "))
  assert "framework: the same computation on both sides" in ratio and re.search(r"CPU \d+\.\d+x", ratio), ratio
  assert any(line.startswith("projected full AWA2 schedule") for line in lines), out
