"""Running `python -m zsl_jax.main` and other commands in a subprocess, as users do.

Subprocesses never get a wall-clock limit: a loaded machine makes a correct run arbitrarily slow.
`run` kills a command only when it shows no progress (no new output line, no change to a watched
file such as metrics.jsonl) for QUIET_S seconds, and a failure shows the command's last lines
instead of the harness's traceback.
"""
import collections
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
QUIET_S = float(os.environ.get("ZSL_JAX_TEST_QUIET_S", "600"))  # silence that counts as a hang
TAIL = 40  # lines of output shown on failure


def env(**extra):
  e = dict(os.environ)
  e["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  e.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  e.update(extra)
  return e


def _signature(paths):
  """What changes when a run makes progress: size and mtime of each watched file (folders: their files)."""
  sig = []
  for p in map(pathlib.Path, paths):
    for f in (sorted(p.iterdir()) if p.is_dir() else [p]):
      try:
        st = f.stat()
      except OSError:
        continue
      sig.append((str(f), st.st_size, st.st_mtime_ns))
  return sig


def log_tails(paths):
  """Last lines of the `*.log` files in the watched folders (launch/local.sh writes each process's output there)."""
  out = []
  for p in map(pathlib.Path, paths):
    for f in (sorted(p.glob("*.log")) if p.is_dir() else []):
      out.append(f"--- last lines of {f}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-TAIL:]))
  return "\n".join(out)


def tail(proc):
  """The last TAIL lines of a `run` result's stdout and stderr, interleaved as they arrived, plus watched logs."""
  text = "\n".join(proc.lines[-TAIL:])
  logs = log_tails(proc.watch)
  return f"{text}\n{logs}" if logs else text


def expect_rc(proc, rc):
  """Fails the test with the command's last output lines unless it exited with `rc`."""
  if proc.returncode != rc:
    pytest.fail(f"{' '.join(map(str, proc.args))[:300]}\nexited {proc.returncode} (expected {rc}); "
                f"last output:\n{tail(proc)}", pytrace=False)


def _reader(stream, sink, lines, lock, last):
  for line in stream:
    with lock:
      sink.append(line)
      lines.append(line.rstrip("\n"))
      last[0] = time.monotonic()
  stream.close()


def _kill(proc):
  try:
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: launch/local.sh's children too
  except ProcessLookupError:
    pass


def run(args, *, cwd=REPO_ROOT, env=None, watch=(), quiet_s=None, check=False):  # pylint: disable=redefined-outer-name
  """Runs `args` to the end; kills it only after `quiet_s` seconds without progress (never on total time).

  Returns a CompletedProcess with stdout/stderr text, plus `lines` (both streams, in arrival order)
  and `watch`. `check=True` fails the test with the last lines unless it exits 0.
  """
  quiet_s = QUIET_S if quiet_s is None else quiet_s
  proc = subprocess.Popen(list(map(str, args)), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, errors="replace", start_new_session=True)
  out, err, lines, lock, last = [], [], collections.deque(maxlen=10 * TAIL), threading.Lock(), [time.monotonic()]
  readers = [threading.Thread(target=_reader, args=(s, sink, lines, lock, last), daemon=True)
             for s, sink in ((proc.stdout, out), (proc.stderr, err))]
  for t in readers:
    t.start()
  sig, stalled = _signature(watch), False
  try:
    while proc.poll() is None or any(t.is_alive() for t in readers):
      time.sleep(0.5)
      new = _signature(watch)
      if new != sig:
        sig, last[0] = new, time.monotonic()
      if time.monotonic() - last[0] > quiet_s:
        stalled = True
        break
  finally:
    if stalled or proc.poll() is None:
      _kill(proc)
  proc.wait()
  for t in readers:
    t.join(5)
  result = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out), "".join(err))
  result.lines, result.watch = list(lines), tuple(watch)
  if stalled:
    pytest.fail(f"{' '.join(proc.args)[:300]}\nshowed no progress for {quiet_s:.0f} s and was killed "
                f"(set ZSL_JAX_TEST_QUIET_S to wait longer); last output:\n{tail(result)}", pytrace=False)
  if check:
    expect_rc(result, 0)
  return result


def wait_for(condition, procs, watch, what):
  """Polls `condition()` while `procs` run; fails with the watched logs' last lines if one exits first
  or nothing in `watch` changes for QUIET_S seconds (never on total time)."""
  sig, last = _signature(watch), time.monotonic()
  while not condition():
    if any(p.poll() is not None for p in procs):
      pytest.fail(f"a process exited (codes {[p.poll() for p in procs]}) before {what}; last output:\n"
                  f"{log_tails(watch)}", pytrace=False)
    new = _signature(watch)
    if new != sig:
      sig, last = new, time.monotonic()
    if time.monotonic() - last > QUIET_S:
      pytest.fail(f"no progress for {QUIET_S:.0f} s while waiting for {what}; last output:\n{log_tails(watch)}",
                  pytrace=False)
    time.sleep(0.5)


def main_args(config, workdir, *overrides):
  return [sys.executable, "-m", "zsl_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_main(config, workdir, *overrides, check=True):
  """`python -m zsl_jax.main`; progress is any output line or a new metrics.jsonl row."""
  return run(main_args(config, workdir, *overrides), env=env(), watch=[pathlib.Path(workdir) / "metrics.jsonl"],
             check=check)


def launch_local(processes, devices, config, workdir, *overrides, check=False):
  """`launch/local.sh` (N processes x D simulated devices); progress includes the per-process logs."""
  e = env()
  e.pop("XLA_FLAGS", None)
  workdir = pathlib.Path(workdir)
  return run(["bash", REPO_ROOT / "launch" / "local.sh", processes, devices, f"--config={config}",
              f"--workdir={workdir}", *overrides], env=e, watch=[workdir / "metrics.jsonl", workdir / "logs"],
             check=check)


def popen_main(config, workdir, *overrides):
  return subprocess.Popen(main_args(config, workdir, *overrides), cwd=REPO_ROOT, env=env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def restore_state(config, workdir):
  """(latest checkpointed state as numpy, its step) of a run, restored onto one device."""
  import jax  # pylint: disable=import-outside-toplevel

  from zsl_jax import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from zsl_jax import engine  # pylint: disable=import-outside-toplevel
  from zsl_jax import sharding  # pylint: disable=import-outside-toplevel
  eng = engine.Engine(config, workdir, mesh=sharding.make_mesh(dict(data=1, fsdp=1), jax.devices()[:1]))
  eng.build_state(with_optimizer=True)
  ck = ckpt_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints")
  state, step = ck.restore(eng.abstract_state)
  ck.close()
  return jax.device_get(state), step
