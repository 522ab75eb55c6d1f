"""The launch scripts parse, pass shellcheck, and refuse bad usage with a clear message."""
import pathlib
import shutil
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))


def test_all_launchers_are_present():
  assert {p.name for p in SCRIPTS} >= {"local.sh", "setup.sh", "slurm_gpu.sbatch", "tpu_pod.sh"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck not installed (apt-get install shellcheck)")
  proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script,env,needle", [
    ("local.sh", {}, "usage"),
    ("slurm_gpu.sbatch", {}, "usage"),
    ("tpu_pod.sh", {}, "TPU_NAME"),
    ("tpu_pod.sh", {"TPU_NAME": "x", "ZONE": "z"}, "usage"),
])
def test_usage_errors(script, env, needle):
  proc = subprocess.run(["bash", str(LAUNCH / script)], capture_output=True, text=True, check=False,
                        env={"PATH": "/usr/bin:/bin", **env})
  assert proc.returncode != 0 and needle in proc.stderr
