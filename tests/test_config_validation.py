"""Every config switch is validated once, before anything is written or traced (issue 12).

A misspelled value of any switched field of the shipped configs, given on the real command line,
ends `zsl_jax.main` with exit 2 and one stderr line naming the field and its valid values, and
creates no workdir. The value lists live next to the code that implements them; the unit tests at
the bottom check that each list is exactly what that code accepts, so they cannot drift.

Cost: one `python -m zsl_jax.main` per switch would spend ~3 s each importing jax. The cases run
instead in one helper process that imports zsl_jax's modules once and forks a child per command
line; each child runs the `zsl_jax.main` module as `__main__` with that argv (absl flags, config
file, check_config), exactly as `python -m` does. A few cases also run as real subprocesses.
"""
import json
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from tests import cli as cli_runner
from zsl_jax import config_lib
from zsl_jax import engine
from zsl_jax import optim
from zsl_jax import projects
from zsl_jax import sharding
from zsl_jax import trainer as base_trainer
from zsl_jax.errors import UserError
from zsl_jax.models import clip as clip_lib
from zsl_jax.models.clip import modified_resnet
from zsl_jax.models.clip import text_transformer
from zsl_jax.projects.attr import evaluator as gzsl
from zsl_jax.projects.attr.data import samplers
from zsl_jax.projects.attr.data import xlsa17
from zsl_jax.projects.attr.losses import dazle as dazle_losses
from zsl_jax.projects.attr.models import vsmr as vsmr_model
from zsl_jax.projects.attr.trainers import dazle as dazle_trainer
from zsl_jax.projects.attr.trainers import vsmr as vsmr_trainer
from zsl_jax.projects.hgr import loss as hgr_loss
from zsl_jax.projects.hgr import negatives
from zsl_jax.projects.hgr import trainer as hgr_trainer
from zsl_jax.projects.hgr.data import array_record

CORE = {"mode": config_lib.MODES, "compute_dtype": base_trainer.COMPUTE_DTYPES, "optim.name": optim.OPTIMIZERS,
        "optim.schedule.type": optim.SCHEDULES, "sharding.strategy": sharding.STRATEGIES}
HGR = {"hgr.method": negatives.METHODS, "hgr.sampler": negatives.SAMPLERS, "hgr.level_weights": hgr_loss.SCHEMES,
       "hgr.index_by": hgr_loss.INDEX_BY, "hgr.weighting": hgr_loss.WEIGHTINGS, "model.name": hgr_trainer.MODEL_NAMES,
       "hgr.negatives_from": negatives.NEGATIVES_FROM,
       "data.images": array_record.IMAGE_SOURCES, "model.remat_text": text_transformer.REMAT_POLICIES,
       "model.remat_image": text_transformer.REMAT_POLICIES, "model.conv_impl": modified_resnet.CONV_IMPLS}
ATTR = {"data.dataset": xlsa17.DATASETS, "data.sampler": samplers.KINDS, "zsl.select_on": dazle_trainer.SELECT_ON,
        "evals.gzsl.type": tuple(projects.EVALUATORS)}
FAMILIES = {
    "hgr_rn50": {**CORE, **HGR},
    "clip_rn50_baseline": {**CORE, **HGR},
    "dazle_awa2": {**CORE, **ATTR, "loss.type": dazle_losses.LOSS_TYPES, "loss.ce_over": dazle_losses.CE_OVER},
    "vsmr_awa2": {**CORE, **ATTR, "model.classifier_pool": vsmr_model.POOLS,
                  "vsmr.test_masks": vsmr_trainer.TEST_MASKS},
}
CASES = [(family, field) for family, fields in FAMILIES.items() for field in fields]
# Config-argument mistakes (after the colon) end the same way: (config, one substring of the line).
ARG_CASES = [("hgr_rn50.py:eval=21k", "eval='21k' is not one of: in21k_d, in21k_p, hop2, hop3"),
             ("dazle_awa2.py:demoo", "unknown config argument 'demoo'"),
             ("hgr_rn50.py:demo", "every part of a --config.a.b override must be a Python name")]
ARG_OVERRIDES = {"hgr_rn50.py:demo": ["--config.evals.21k_d.every_steps=3"]}  # the former name: not a Python name

_SERVER = r"""
import importlib, json, os, runpy, sys, traceback
import absl.app, ml_collections.config_flags, zsl_jax.engine
from zsl_jax import projects
for module in (*projects.TRAINERS.values(), *projects.EVALUATORS.values()):
  importlib.import_module(module)  # zsl_jax.main itself is not imported: each child defines its flags
codes = []
for argv, err in json.loads(sys.stdin.read()):
  pid = os.fork()
  if pid == 0:
    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    sys.argv = ["zsl_jax/main.py", *argv]
    code = 0
    try:
      runpy.run_module("zsl_jax.main", run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
      traceback.print_exc()
      code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(codes))
"""


def _typo(value, choices):
  typo = str(value)[:-1] or "x"
  return typo if typo.upper() not in {str(c).upper() for c in choices} else typo + "q"


def _current(family, field):
  config = __import__(f"configs.{family}", fromlist=["get_config"]).get_config("demo")
  value = config_lib.lookup(config, field)
  assert value is not None, f"{family} has no field {field}"
  return value


def _run_forked(commands, tmp):
  """[(exit code, stderr)] of `python -m zsl_jax.main *argv` for each argv, run in forked children."""
  errs = [str(tmp / f"stderr{i}.txt") for i in range(len(commands))]
  proc = subprocess.run([sys.executable, "-c", _SERVER], input=json.dumps(list(zip(commands, errs))),
                        cwd=cli_runner.REPO_ROOT, env=cli_runner.env(JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  codes = json.loads(proc.stdout.strip().splitlines()[-1])
  return [(code, pathlib.Path(err).read_text()) for code, err in zip(codes, errs)]


@pytest.fixture(scope="module")
def forked(tmp_path_factory):
  """{case: (exit code, stderr, workdir)} of every command line of this module, run once."""
  tmp = tmp_path_factory.mktemp("cli")
  commands, keys = [], []
  for family, field in CASES:
    workdir = tmp / f"{family}-{field}"
    typo = _typo(_current(family, field), FAMILIES[family][field])
    commands.append([f"--config=configs/{family}.py:demo", f"--workdir={workdir}", f"--config.{field}={typo}"])
    keys.append(((family, field), workdir))
  for config, _ in ARG_CASES:
    workdir = tmp / f"arg-{len(keys)}"
    commands.append([f"--config=configs/{config}", f"--workdir={workdir}", *ARG_OVERRIDES.get(config, [])])
    keys.append((config, workdir))
  results = _run_forked(commands, tmp)
  return {key: (code, err, workdir) for (key, workdir), (code, err) in zip(keys, results)}


def _assert_one_line(code, err, workdir):
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err[-3000:])
  assert lines[0].startswith("zsl_jax main: error: "), lines[0]
  assert not workdir.exists()
  return lines[0]


@pytest.mark.parametrize("family,field", CASES)
def test_misspelled_switch_exits_2_with_one_line(forked, family, field):
  code, err, workdir = forked[(family, field)]
  line = _assert_one_line(code, err, workdir)
  choices = FAMILIES[family][field]
  typo = _typo(_current(family, field), choices)
  assert f"config.{field}={typo!r} is not one of: {', '.join(choices)}" in line, line


@pytest.mark.parametrize("config,expected", ARG_CASES)
def test_config_argument_mistakes_exit_2_with_one_line(forked, config, expected):
  line = _assert_one_line(*forked[config])
  assert expected in line, line


@pytest.mark.parametrize("family,field", [("hgr_rn50", "hgr.weighting"), ("dazle_awa2", "loss.ce_over")])
def test_real_subprocess(tmp_path, family, field):
  """The same through `python -m zsl_jax.main` itself (the forked runs share only the imports)."""
  proc = cli_runner.run_main(f"configs/{family}.py:demo", tmp_path / "w", f"--config.{field}=typo", check=False)
  line = _assert_one_line(proc.returncode, proc.stderr, tmp_path / "w")
  assert f"config.{field}='typo' is not one of: {', '.join(FAMILIES[family][field])}" in line


def test_every_documented_switch_is_validated():
  """Fields documented as `a | b` in the config sources are in the tables above (a new switch needs a check)."""
  sources = [config_lib.__file__, pathlib.Path(hgr_trainer.__file__).parent / "config.py",
             pathlib.Path(dazle_trainer.__file__).parents[1] / "config.py"]
  documented = set()
  for path in sources:
    for line in pathlib.Path(path).read_text().splitlines():
      m = re.match(r"\s*(?:c\.)?([\w.]+)\s*=[^#]*#\s*[\w.]+.*\|", line)
      if m and "(regex," not in line:
        documented.add(m.group(1).split(".")[-1])
  validated = {f.split(".")[-1] for fields in FAMILIES.values() for f in fields} | {"loss"}  # loss: type | ce_over
  assert documented and documented <= validated, documented - validated


@pytest.mark.parametrize("name", sorted(p.stem for p in (cli_runner.REPO_ROOT / "configs").glob("*.py")))
def test_shipped_configs_pass_their_checks(name):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  for arg in (None, "demo"):
    config = module.get_config(arg)
    engine.trainer_class(config).check_config(config)


# --------------------------------------------------------------------------- lists == what the code accepts
def _accepts(fn, choices, bogus="bogus"):
  for value in choices:
    fn(value)
  with pytest.raises(UserError, match="is not one of"):
    fn(bogus)


def test_hgr_lists_match_the_loss_and_sampler():
  depths = np.array([[1, 0, -1]], np.int32)  # [K=1, M=3]
  contrasts = {"outer_depths": np.array([1], np.int32), "inner_depths": depths, "k_index": np.zeros(2, np.int32),
               "m_index": np.arange(2, dtype=np.int32), "group_mask": np.ones(2, bool)}
  theta, counts = np.zeros(3, np.float32), np.ones(3, np.float32)
  _accepts(lambda s: hgr_loss.loop_weights(s, depths, theta, counts), hgr_loss.SCHEMES)
  _accepts(lambda w: hgr_loss.contrast_weights("equal", contrasts, theta, counts, weighting=w), hgr_loss.WEIGHTINGS)
  _accepts(lambda i: hgr_loss.loop_weights("adaptive", depths, theta, counts, index_by=i), hgr_loss.INDEX_BY)
  paths = np.array([[0, -1], [0, 1], [0, 2]], np.int32)
  build = lambda **kw: negatives.ContrastSampler(paths, np.array([0, 1, 1]), [[1, 2], [], []], [0],
                                                 similarity_fn=lambda n: np.zeros(3), **kw)
  for name, choices in (("strategy", negatives.SAMPLERS), ("method", negatives.METHODS)):
    for value in choices:
      build(**{name: value})
    with pytest.raises(UserError, match=name.replace("strategy", "sampler")):
      build(**{name: "bogus"})


def test_model_names_and_image_sources():
  assert set(hgr_trainer.MODEL_NAMES) == {"custom", *clip_lib.PRESETS}
  assert hgr_trainer.preset_name("ViT-B-32") == "ViT-B/32" and hgr_trainer.preset_name("custom") == "custom"
  index = object()
  assert array_record.open_images(index, ml_collections.ConfigDict(dict(images="folder")), ()) is index
  with pytest.raises(UserError, match="needs --config.data.array_record"):
    array_record.open_images(index, ml_collections.ConfigDict(dict(images="array_record", array_record="")), ())
  with pytest.raises(UserError, match="data.images"):
    array_record.open_images(index, ml_collections.ConfigDict(dict(images="bogus")), ())
  assert array_record.IMAGE_SOURCES == ("folder", "array_record")


def test_engine_lists_match_optim_sharding_dtype_and_modes(monkeypatch, tmp_path):
  _accepts(lambda n: optim.make(config_lib.optim_config(name=n), 10), optim.OPTIMIZERS)
  _accepts(lambda t: optim.make_schedule(1.0, {"type": t}, 10), optim.SCHEDULES)
  mesh = jax.make_mesh((1, 1), sharding.MESH_AXES, devices=jax.devices()[:1])
  tree = {"w": jax.ShapeDtypeStruct((4, 4), np.float32)}
  _accepts(lambda s: sharding.infer_shardings(tree, mesh, {"strategy": s}), sharding.STRATEGIES)
  _accepts(lambda s: sharding.infer_shardings(tree, mesh, {"rules": (("w", s),)}), sharding.STRATEGIES)
  _accepts(lambda d: base_trainer.compute_dtype({"compute_dtype": d}), base_trainer.COMPUTE_DTYPES)

  class Stub:
    def __init__(self, config, workdir):
      del config, workdir
    train = evaluate = lambda self: "ran"
  monkeypatch.setattr(engine, "Engine", Stub)
  for mode in config_lib.MODES:
    assert engine.run(ml_collections.ConfigDict(dict(mode=mode)), tmp_path) == "ran"
  with pytest.raises(UserError):
    engine.run(ml_collections.ConfigDict(dict(mode="bogus")), tmp_path)


def test_engine_check_covers_groups_and_rules():
  config = config_lib.base_config()
  base_trainer.check_engine_config(config)
  config.optim.groups = (("^a/", dict(name="sgdd")),)
  with pytest.raises(UserError, match=r"config.optim.groups\[0\].name='sgdd' is not one of: adamw"):
    base_trainer.check_engine_config(config)
  config.optim.groups = (("^a/", dict(schedule=dict(type="cosin"))), ("^b/", None))
  with pytest.raises(UserError, match=r"groups\[0\].schedule.type='cosin'"):
    base_trainer.check_engine_config(config)
  config.optim.groups = ()
  config.sharding.rules = (("^a/", "fsdpp"),)
  with pytest.raises(UserError, match=r"config.sharding.rules\[0\]='fsdpp' is not one of: replicate, fsdp"):
    base_trainer.check_engine_config(config)


def test_attr_lists_match_sampler_dataset_losses_pool_and_selection():
  rows, labels = np.arange(12), np.repeat(np.arange(3), 4)
  for kind in samplers.KINDS:
    samplers.make_sampler(kind, rows, labels, 6, 0)
  with pytest.raises(UserError, match="'bogus'"):
    samplers.make_sampler("bogus", rows, labels, 6, 0)
  for name in xlsa17.DATASETS:
    assert xlsa17.check_dataset_name(name.lower()) == name
  with pytest.raises(UserError):
    xlsa17.check_dataset_name("AWA")
  out = {"scores": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}
  out["scores_raw"] = out["scores"]
  loss = lambda **kw: dazle_losses.dazle_loss(out, np.array([0, 1]), np.array([False, False, True]), **kw)
  _accepts(lambda t: loss(loss_type=t), dazle_losses.LOSS_TYPES)
  _accepts(lambda o: loss(ce_over=o), dazle_losses.CE_OVER)
  x = np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)  # [B, R, F]
  pooled = {}
  for pool in vsmr_model.POOLS:
    model = vsmr_model.VSMR(num_attributes=3, feature_dim=8, w2v_dim=4, hidden=6, classifier_pool=pool)
    variables = model.init(jax.random.PRNGKey(0), x, np.ones((2, 3), bool), np.zeros((3, 3), np.float32))
    dense = variables["params"]["attr_classifier"]
    pooled[pool] = np.asarray(model.apply(variables, x, method=model.attribute_logits))
    want = getattr(x, pool)(1) @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    np.testing.assert_allclose(pooled[pool], want, rtol=1e-5, atol=1e-5)
  assert set(dazle_trainer.SELECT_ON) == set(gzsl.SELECT_LABEL)
  assert vsmr_trainer.TEST_MASKS[0] == _current("vsmr_awa2", "vsmr.test_masks")
