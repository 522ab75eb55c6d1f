"""Batch buffers kept in the heap (`zsl_jax.data.host_memory`): fewer pages faulted in afresh per step.

The product path: `sampling.iterator` (which calls `host_memory.keep_batch_buffers` when it builds the
grain read-ahead) with DAZLE's balanced sampler gathering 40 rows of a [400, 49, 2048] float32 table per
step (AWA2's batch, 16 MB) in 2 grain threads, as the in-memory feature loader does. Each child process
is fresh (the setting is process-wide and cannot be undone); in one, `keep_batch_buffers` is replaced by
a no-op (glibc's defaults). Minor page faults per step are counted after a warm-up: with the defaults
the reader threads' heaps are trimmed and grown again from step to step.
(benchmarks/dazle_input.py shows what it costs: process sys time 12.6 s -> 5.6 s.)
"""
import platform
import subprocess
import sys

import pytest

from tests import cli

CHILD = r"""
import resource, sys
import numpy as np
from zsl_jax.data import host_memory, sampling

if sys.argv[1] == "defaults":
  host_memory.keep_batch_buffers = lambda: False
table = np.random.default_rng(0).standard_normal((400, 49, 2048), dtype=np.float32)
labels = np.repeat(np.arange(40), 10)
sampler = sampling.BalancedSampler(np.arange(400), labels, 40, 0)
it = sampling.iterator(sampler, lambda rows: {"features": table[rows]}, num_threads=2, prefetch=4)
for _ in range(8):  # warm-up
  next(it)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(60):
  next(it)["features"].sum()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 60, host_memory.keep_batch_buffers())
it.close()
"""


def _faults_per_step(mode):
  proc = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=cli.REPO_ROOT, env=cli.env(), capture_output=True,
                        text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  faults, kept = proc.stdout.split()
  return float(faults), kept == "True"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_the_training_iterator_stops_faulting_in_fresh_batch_buffers():
  before, kept_before = _faults_per_step("defaults")
  after, kept_after = _faults_per_step("kept")
  assert not kept_before and kept_after  # the iterator switched it on
  assert after <= 0.5 * before, (before, after)  # measured 190-250 -> 34-40 per step
