"""What `python -m zsl_jax.main` prints for a person: help, bars with log lines, the summary, a finished re-run."""
import importlib.util
import re
import sys

import pytest

from tests import cli
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr.hierarchy import splits as splits_lib
from zsl_jax.projects.hgr.tools import build_hierarchy

CONFIG = "tests/toy_config.py"
LOG_LINE = re.compile(r"[IWE] \d\d:\d\d:\d\d ")  # console.install_handler's format
BAR = re.compile(r"compiling step…|\|[^|]*\| *\d+/\d+")  # the compile-phase or the default tqdm layout


def _segments(stderr):
  """Every piece of stderr a terminal shows on one line: split on newlines and carriage returns."""
  return [part for line in stderr.split("\n") for part in line.split("\r")]


@pytest.fixture(scope="module")
def progress_run(tmp_path_factory):
  """A toy run with the progress bar on (log.every_steps=1: a log line at every step while the bar is open)."""
  workdir = tmp_path_factory.mktemp("console")
  return workdir, cli.run_main(CONFIG, workdir, "--config.log.progress=True")


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_help_exits_zero(flag):
  proc = cli.run([sys.executable, "-m", "zsl_jax.main", flag], env=cli.env(), check=True)  # exits 0
  assert "--workdir" in proc.stdout and "--config" in proc.stdout


def test_log_lines_do_not_share_a_line_with_the_bar(progress_run):
  _, proc = progress_run
  segments = _segments(proc.stderr)
  logged = [s for s in segments if "[train] step" in s]
  assert len(logged) == 12, proc.stderr[-3000:]  # one record per step, all printed while the bar was open
  assert all(LOG_LINE.match(s) for s in logged), logged
  mixed = [s for s in segments if LOG_LINE.search(s) and BAR.search(s)]
  assert not mixed, mixed
  assert any(BAR.search(s) and "12/12" in s for s in segments)  # the train bar itself was drawn


def test_compile_phase_shows_no_eta(progress_run):
  _, proc = progress_run
  compiling = [s for s in _segments(proc.stderr) if "compiling step…" in s]
  assert compiling, proc.stderr[-3000:]
  assert not any("<" in s or "step/s" in s for s in compiling), compiling  # no ETA, no rate while compiling


def test_closing_summary_lists_workdir_and_metrics(progress_run):
  workdir, proc = progress_run
  tail = proc.stderr.strip().splitlines()[-15:]
  summary = tail[next(i for i, line in enumerate(tail) if line.startswith("done: train run in ")):]
  assert summary[0] == f"done: train run in {workdir}", tail
  assert any(line.strip().startswith("heldout @ step 12: accuracy=") for line in summary), summary
  assert any(line.startswith("train @ step 12: loss=") for line in map(str.strip, summary)), summary
  assert f"metrics:     {workdir / 'metrics.jsonl'}" in summary
  assert f"checkpoints: {workdir / 'checkpoints'}" in summary
  assert any(f"--config.mode=eval --config.init.checkpoint={workdir}" in line for line in summary), summary


def test_rerun_of_a_finished_run_says_already_complete(progress_run):
  workdir, _ = progress_run
  before = (workdir / "metrics.jsonl").read_bytes()
  checkpoints = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  proc = cli.run_main(CONFIG, workdir, "--config.log.progress=True")
  assert (workdir / "metrics.jsonl").read_bytes() == before  # nothing trained, nothing evaluated again
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == checkpoints
  assert f"already complete (step 12 of 12); nothing to do — metrics in {workdir / 'metrics.jsonl'}" in proc.stderr
  assert not any(BAR.search(s) for s in _segments(proc.stderr)), proc.stderr[-3000:]  # no training bar


def test_missing_timm_list_names_the_p_list_none_way_out(tmp_path, monkeypatch):
  from zsl_jax.projects.hgr.data import demo  # pylint: disable=import-outside-toplevel
  files = demo.make_demo(tmp_path / "demo", train_per_class=1, val_per_class=1, images_per_class=1, image_size=16)
  real = importlib.util.find_spec
  monkeypatch.setattr(splits_lib.importlib.util, "find_spec",
                      lambda name, *a: None if name == "timm" else real(name, *a))  # as if timm were not installed
  args = ("imagenet_xml", files["testsets"], files["winter21"])
  with pytest.raises(UserError, match=r"list was not found; `pip install --no-deps timm`.*--p_list none"):
    build_hierarchy.build(*args, xml=files["xml"], p_list="timm")
  assert build_hierarchy.main(["--xml", files["xml"], "--testsets", files["testsets"], "--winter21",
                               files["winter21"], "--p_list", "none", "--out", str(tmp_path / "h")]) == 0
