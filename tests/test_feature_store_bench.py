"""benchmarks/dazle_input.py runs end to end at toy sizes (--dry-run) and prints one row per layout and mode."""
import os
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_dazle_input_dry_run_prints_every_layout_and_mode():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "benchmarks/dazle_input.py", "--dry-run", "--threads", "2"], cwd=REPO,
                       env=env, capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]  # It also checks every mode's first batch.
  lines = out.stdout.splitlines()
  assert re.search(r"wrote official .*chunks \(23, 4, 1, 1\), gzip 4\), zsl_jax .*chunks \(1, 16, 2, 2\)", out.stdout)
  rows = [line for line in lines if line.startswith(("official ", "zsl_jax ", "converted .npy "))]
  modes = [line[16:48].strip() for line in rows]
  assert modes == ["memory", "chunk-aware, cache holds split", "chunk-aware, cache half split",
                   "chunk-aware, window sampler"] * 2 + ["memmap"], out.stdout
  for line in rows:
    steps, per_wall, per_cpu, cpu, wall, setup = (float(v) for v in line[48:].split()[1:])
    assert steps == 60 and per_wall > 0 and per_cpu > 0 and cpu >= 0 and wall > 0 and setup >= 0, line
