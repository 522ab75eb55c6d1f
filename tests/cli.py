"""Running `python -m zsl_jax.main` in a subprocess, as users do (same env, repo root as cwd)."""
import os
import pathlib
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def env(**extra):
  e = dict(os.environ)
  e["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  e.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  e.update(extra)
  return e


def main_args(config, workdir, *overrides):
  return [sys.executable, "-m", "zsl_jax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_main(config, workdir, *overrides, timeout=600, check=True):
  proc = subprocess.run(main_args(config, workdir, *overrides), cwd=REPO_ROOT, env=env(),
                        capture_output=True, text=True, timeout=timeout, check=False)
  if check and proc.returncode != 0:
    raise AssertionError(f"zsl_jax.main exited {proc.returncode}:\n{proc.stderr[-4000:]}")
  return proc


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
