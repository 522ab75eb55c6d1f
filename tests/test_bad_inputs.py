"""Bad inputs end with one line and exit 2, through the real command lines; dropped inputs are counted (issue 16).

Every case runs `python -m zsl_jax.main` or `python -m zsl_jax.tools.<name>` in a subprocess, as a user
would, and checks: exit status 2, exactly one `zsl_jax <command>: error:` line naming the problem and
the fix, no `Traceback` anywhere on stderr, and (for mistakes found before the run starts) nothing
on stderr besides that line and no workdir created. The commands run two at a time in one fixture.
The last tests check that inputs the data tools leave out are counted in a console warning.
"""
import concurrent.futures
import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import dazle_awa2 as configs_dazle
from configs import hgr_rn50 as configs_hgr
from configs import hgr_rn50_lowshot as configs_lowshot
from tests import cli
from zsl_jax import engine
from zsl_jax import trainer
from zsl_jax.errors import UserError

DAZLE, VSMR, HGR = "configs/dazle_awa2.py:demo", "configs/vsmr_cub.py:demo", "configs/hgr_rn50.py:demo"
# name -> (command, args, substrings of the error line, found before the run starts: stderr is that line alone)
CASES = {
    "batch_size_0": ("main", [f"--config={DAZLE}", "--config.batch_size=0"], ["config.batch_size=0 must be >= 1"], 1),
    "hgr_eval_batch": ("main", [f"--config={HGR}", "--config.evals.in21k_d.batch_size=-1"],
                       ["config.evals.in21k_d.batch_size=-1 must be >= 1"], 1),
    "hgr_class_slots": ("main", [f"--config={HGR}", "--config.hgr.classes_per_step=5"],
                        ["hgr.classes_per_step=5 does not divide batch_size=24", "pick a divisor of 24"], 1),
    "total_steps": ("main", [f"--config={DAZLE}", "--config.total_steps=-5"],
                    ["config.total_steps=-5 must be >= 0"], 1),
    "no_config": ("main", ["--config=nonexistent.py", "--config.total_steps=3"],
                  ["config file 'nonexistent.py' does not exist", "--config=configs/"], 1),
    "config_not_python": ("main", ["--config={text}"], ["line 1 is not valid Python"], 1),
    "arg_type": ("main", ["--config=configs/hgr_rn50_lowshot.py:demo,shots=x"],
                 ["config argument shots='x'", "is not an integer"], 1),
    "workdir_file": ("main", [f"--config={DAZLE}", "--workdir={file}"], ["--workdir", "is not a folder"], 1),
    "workdir_parent_file": ("main", [f"--config={DAZLE}", "--workdir={file}/run"],
                            ["--workdir", "cannot be created", "is a file, not a folder"], 1),
    "hgr_init_random": ("main", [f"--config={HGR}", "--config.init.checkpoint={random_pth}"],
                        ["is not a readable torch checkpoint", "CLIP checkpoint"], 0),
    "dazle_init_npz": ("main", [f"--config={DAZLE}", "--config.init.checkpoint={random_npz}"],
                       ["is not a readable .npz file"], 0),
    "dazle_w2v_text": ("main", [f"--config={DAZLE}", "--config.data.w2v={text}"],
                       ["is not a pickled or .npy array"], 0),
    "convert_random": ("convert_clip", ["{random_bin}", "{tmp}/clip"], ["is not a readable torch checkpoint"], 1),
    "import_dazle_random": ("import_dazle", ["--checkpoint", "{random_pth}", "--hdf5", "{tmp}/none.hdf5", "--out",
                                             "{tmp}/d.npz"], ["is not a readable torch checkpoint"], 1),
    "vectors_text": ("word_vectors", ["--dataset", "AWA2", "--names", "{names}", "--vectors", "{text}", "--out",
                                      "{tmp}/w.pkl"], ["line 1 is not `word v1 ... vD` with numbers"], 1),
    "splits_out": ("make_splits", ["--hierarchy", "h", "--ilsvrc_train", "a", "--ilsvrc_val", "b", "--imagenet21k",
                                   "c", "--out", "{file}/index"], ["--out", "cannot be created"], 1),
}
# The same checks' other cases, through each tool's `main(argv)` in this process (what `python -m` runs).
IN_PROCESS = {
    "convert_out_file": ("convert_clip", ["{random_bin}", "{file}"], ["OUTPUT", "is not a folder"]),
    "import_dazle_out": ("import_dazle", ["--checkpoint", "{random_pth}", "--hdf5", "x", "--out", "{file}/d.npz"],
                         ["--out", "cannot be created"]),
    "import_dazle_npz": ("import_dazle", ["--checkpoint", "{random_npz}", "--hdf5", "x", "--out", "{tmp}/d.npz"],
                         ["is not a readable .npz file"]),
    "vectors_inspect_text": ("word_vectors", ["--inspect", "{text}"], ["is not a pickled or .npy array"]),
    "vectors_out_folder": ("word_vectors", ["--dataset", "AWA2", "--names", "{names}", "--vectors", "{text}",
                                            "--out", "{tmp}"], ["--out", "is a folder"]),
    "hierarchy_out": ("build_hierarchy", ["--testsets", "x", "--winter21", "y", "--out", "{file}"],
                      ["--out", "is not a folder"]),
}


def _args(args, tmp):
  places = {k: str(tmp / v) for k, v in (("file", "a_file"), ("random_pth", "random.pth"), ("random_npz", "random.npz"),
                                         ("random_bin", "random.bin"), ("text", "notes.txt"), ("names", "names.csv"))}
  return [a.format(tmp=tmp, **places) for a in args]


def _command(name, args, tmp):
  module = "zsl_jax.main" if name == "main" else f"zsl_jax.tools.{name}"
  args = _args(args, tmp)
  if name == "main" and not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={tmp / 'workdir'}")
  return [sys.executable, "-m", module, *args]


def _inputs(tmp):
  """Files that are not what they claim: random bytes as .pth/.npz/.bin, prose as word vectors or a config."""
  rng = np.random.default_rng(0)
  for name in ("random.pth", "random.npz", "random.bin"):
    (tmp / name).write_bytes(rng.bytes(4000))
  (tmp / "notes.txt").write_text("these are notes\nnot word vectors at all\n")
  (tmp / "names.csv").write_text("idx,new_des\n0,black\n1,white\n")
  (tmp / "a_file").write_text("a file where a folder is expected\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{case: (returncode, stderr, its tmp folder)} of every CASES command, two running at a time."""
  root = tmp_path_factory.mktemp("bad_inputs")

  def run(case):
    name, args = CASES[case][:2]
    tmp = root / case
    tmp.mkdir()
    _inputs(tmp)
    proc = cli.run(_command(name, args, tmp), env=cli.env(JAX_PLATFORMS="cpu"))
    return case, (proc.returncode, proc.stderr, tmp)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    return dict(pool.map(run, CASES))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(results, case):
  name, _, expected, before_run = CASES[case]
  code, err, tmp = results[case]
  assert code == 2 and "Traceback" not in err, (code, err[-3000:])
  lines = [line for line in err.splitlines() if line.startswith(f"zsl_jax {name}: error: ")]
  assert len(lines) == 1, err[-3000:]
  assert all(e in lines[0] for e in expected), lines[0]
  if before_run:  # Found before anything ran: that line is all, and no workdir was made.
    assert err.strip().splitlines() == lines, err[-3000:]
    assert not (tmp / "workdir").exists()
  if name == "convert_clip":
    assert "pickles" not in lines[0]  # random bytes are not "Python objects besides tensors"


@pytest.mark.parametrize("case", list(IN_PROCESS))
def test_bad_tool_input_in_process(case, tmp_path, capsys):
  name, args, expected = IN_PROCESS[case]
  _inputs(tmp_path)
  tool = importlib.import_module(f"zsl_jax.tools.{name}")
  assert tool.main(_args(args, tmp_path)) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"zsl_jax {name}: error: ") and err.count("\n") == 1, err
  assert all(e in err for e in expected), err


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("evals.gzsl.batch_size", 0), ("total_steps", -1),
                                         ("num_epochs", -0.5), ("num_epochs", float("nan")),
                                         ("checkpoint.every_steps", -1), ("log.every_steps", -2),
                                         ("evals.gzsl.every_steps", -1), ("checkpoint.keep", -1),
                                         ("optim.schedule.warmup_steps", -3)])
def test_every_count_is_checked(field, value):
  """What the subprocess cases check for three fields, for every counted field (check_config, before any work)."""
  config = configs_dazle.get_config("demo")
  trainer.check_engine_config(config)
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value
  with pytest.raises(UserError, match=f"config.{re.escape(field)}={re.escape(repr(value))} must be >= "):
    engine.trainer_class(config).check_config(config)


def test_hgr_evaluator_counts_are_checked():
  config = configs_hgr.get_config("demo")
  config.evals.in21k_d.prompt_batch = 0
  with pytest.raises(UserError, match=r"config.evals.in21k_d.prompt_batch=0 must be >= 1"):
    engine.trainer_class(config).check_config(config)


@pytest.mark.parametrize("arg,match", [("demo=maybe", "demo='maybe' in 'demo=maybe' is not true or false"),
                                       ("shots=2.5", "shots='2.5' .* is not an integer"),
                                       ("shots", "'shots' in 'shots' needs a value"),
                                       ("eval=21k", "eval='21k' is not one of: in21k_d, in21k_p, hop2, hop3")])
def test_config_argument_values_are_checked(arg, match):
  with pytest.raises(UserError, match=match):
    configs_lowshot.get_config(arg)
  assert configs_lowshot.get_config("demo=no,shots=2,eval=2hop").data.demo is False


@pytest.fixture
def read_only_dir(tmp_path):
  """A folder no one can write into: chmod 555 for a normal user; for root (whom chmod does not stop), a
  read-only tmpfs mounted there, the read-only filesystem a user meets on a shared or archived volume."""
  locked = tmp_path / "locked"
  locked.mkdir()
  if os.geteuid() != 0:
    locked.chmod(0o555)
    try:
      yield locked
    finally:
      locked.chmod(0o755)  # Even after a failure: pytest must be able to delete tmp_path.
    return
  mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(locked)],
                         capture_output=True, text=True, check=False)
  if mount.returncode != 0:
    pytest.skip(f"root writes through chmod 555, and a read-only tmpfs cannot be mounted here: {mount.stderr.strip()}")
  try:
    yield locked
  finally:
    subprocess.run(["umount", str(locked)], check=True)


def test_read_only_workdir_and_output_folder(read_only_dir, tmp_path):
  locked = read_only_dir
  for name, args in (("main", [f"--config={DAZLE}", f"--workdir={locked / 'run'}"]),
                     ("main", [f"--config={DAZLE}", f"--workdir={locked}"]),
                     ("convert_clip", ["x.pt", str(locked / "clip")]),
                     ("zsl_demo", ["--out", str(locked / "demo")]),
                     ("array_record", ["--index", str(tmp_path), "--out", str(locked / "records")]),
                     ("compare_zero_shot", ["--demo", "--clip", str(tmp_path), "--out", str(locked / "compare")])):
    proc = cli.run(_command(name, args, tmp_path), env=cli.env(JAX_PLATFORMS="cpu"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "not writable" in lines[0] and str(locked) in lines[0], \
        proc.stderr[-3000:]


# ------------------------------------------------------------------------------------ dropped inputs are counted
@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
  from zsl_jax.projects.hgr.data import demo  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("demo_files")
  return demo.make_demo(root, train_per_class=1, val_per_class=1, images_per_class=1, image_size=16)


def _tool(name, *args):
  proc = cli.run([sys.executable, "-m", f"zsl_jax.tools.{name}", *map(str, args)], env=cli.env(JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return [line for line in proc.stderr.splitlines() if line.startswith("WARNING: ")]


def test_build_hierarchy_counts_wnids_it_leaves_out(demo_files, tmp_path):
  """A universe WNID absent from WordNet and a listed class outside the graph: warned about, counted, recorded."""
  universe = json.loads(pathlib.Path(demo_files["universe"]).read_text()) + ["n99999999"]
  (tmp_path / "universe.json").write_text(json.dumps(universe))
  testsets = json.loads(pathlib.Path(demo_files["testsets"]).read_text())
  testsets["all"] = testsets["all"] + ["n99999998"]
  (tmp_path / "testsets.json").write_text(json.dumps(testsets))
  warnings = _tool("build_hierarchy", "--source", "wordnet", "--universe", tmp_path / "universe.json", "--testsets",
                   tmp_path / "testsets.json", "--winter21", demo_files["winter21"], "--p_list", demo_files["p_list"],
                   "--out", tmp_path / "h")
  n = len(set(universe))
  assert f"WARNING: 1 of {n} universe WNIDs are not WordNet 3.0 nouns and are left out of the hierarchy, " \
         "e.g. n99999999" in warnings[0], warnings
  listed = len(dict.fromkeys(testsets["all"]))
  assert any(f"class list 'all': 1 of {listed} WNIDs left out (1 not in the hierarchy graph, 0 not in the " \
             "winter-2021 release), e.g. n99999998" in w for w in warnings), warnings
  assert len(warnings) == 2, warnings
  meta = json.loads((tmp_path / "h" / "hierarchy.json").read_text())["meta"]
  assert meta["skipped_not_in_wordnet"] == ["n99999999"] and meta["class_counts"]["all"] == 39


def test_make_splits_counts_classes_without_images(demo_files, tmp_path):
  """A class without a folder, one with an empty folder, a non-image file: each warned about with its count."""
  hier = tmp_path / "h"
  hierarchy_tool = importlib.import_module("zsl_jax.tools.build_hierarchy")
  assert hierarchy_tool.main(["--xml", demo_files["xml"], "--names", "xml", "--testsets", demo_files["testsets"],
                              "--winter21", demo_files["winter21"], "--p_list", demo_files["p_list"],
                              "--out", str(hier)]) == 0
  unseen = json.loads((hier / "class_splits.json").read_text())["rest"]
  w21 = pathlib.Path(demo_files["imagenet21k"])
  for f in (w21 / unseen[0]).iterdir():
    f.unlink()
  (w21 / unseen[0]).rmdir()
  for f in (w21 / unseen[1]).iterdir():
    f.unlink()
  (w21 / unseen[2] / "notes.txt").write_text("not an image")
  warnings = _tool("make_splits", "--hierarchy", hier, "--ilsvrc_train", demo_files["ilsvrc_train"], "--ilsvrc_val",
                   demo_files["ilsvrc_val"], "--imagenet21k", w21, "--out", tmp_path / "index", "--workers", 2)
  assert warnings == [
      f"WARNING: {w21}: 1 files without an image extension (.jpeg .jpg .png .bmp .gif .webp) are not indexed",
      f"WARNING: imagenet21k {w21}: 2 of {len(unseen)} classes have no images (1 without a folder, 1 with no image "
      f"file), e.g. {unseen[0]}, {unseen[1]}; they get no rows from it (listed in the index's meta.json)"]
  meta = json.loads((tmp_path / "index" / "meta.json").read_text())
  assert meta["missing_class_dirs"]["imagenet21k"] == [unseen[0]]
  assert meta["empty_class_dirs"]["imagenet21k"] == [unseen[1]]
