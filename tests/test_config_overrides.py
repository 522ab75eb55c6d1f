"""Every config field can be overridden from the command line (issue 16).

Each shipped config is parsed the way `zsl_jax.main` parses it (ml_collections config_flags, locked
config, `--config.a.b=v` overrides), in-process: every evaluator a config can declare gets its
`batch_size` overridden, and the value must arrive. HGR's evaluator names were `21k_d`, `21k_p`,
`2hop`, `3hop` before: not Python names, so such an override could not even be parsed; those names
still select the renamed evaluators through `:eval=`.
"""

from absl import flags
from ml_collections import config_flags
import pytest

from tests import cli
from zsl_jax import engine
from zsl_jax import metrics
from zsl_jax import train_loop
from zsl_jax.projects.hgr import config as hgr_config
from zsl_jax.projects.hgr import evaluator as hgr_evaluator

CONFIGS = sorted(p.stem for p in (cli.REPO_ROOT / "configs").glob("*.py"))
HGR_CONFIGS = ("hgr_rn50", "clip_rn50_baseline", "hgr_rn50_lowshot")


def _parse(config_arg, *overrides):
  """The ConfigDict `python -m zsl_jax.main --config=<config_arg> <overrides>` would run with."""
  argv = ["zsl_jax.main", f"--config={config_arg}", *overrides]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return holder.value


def _variants(name):
  """Every config argument that changes which evaluators a config declares ("" = the default)."""
  args = [""] + ([f"eval={e}" for e in hgr_config.EVAL_SETS] if name in HGR_CONFIGS else [])
  return [f"configs/{name}.py" + (f":{a}" if a else "") for a in args]


CASES = [variant for name in CONFIGS for variant in _variants(name)]


@pytest.mark.parametrize("config_arg", CASES)
def test_every_evaluator_batch_size_can_be_overridden(config_arg):
  evals = sorted(_parse(config_arg).evals)
  assert evals, config_arg
  for name in evals:
    config = _parse(config_arg, f"--config.evals.{name}.batch_size=3", "--config.batch_size=5")
    assert config.evals[name].batch_size == 3 and config.batch_size == 5, (config_arg, name)


def test_every_shipped_config_is_covered():
  assert set(CONFIGS) >= set(HGR_CONFIGS) and len(CONFIGS) == 9
  declared = {name for arg in CASES for name in _parse(arg).evals}
  assert declared == {"gzsl", *hgr_config.EVAL_SETS}
  assert all(name.isidentifier() for name in declared)


@pytest.mark.parametrize("old,new", sorted(hgr_config.LEGACY_EVAL_NAMES.items()))
def test_former_evaluator_names_still_select_the_renamed_ones(old, new):
  config = _parse(f"configs/hgr_rn50.py:demo,eval={old}", f"--config.evals.{new}.prompt_batch=7")
  assert list(config.evals) == [new] and config.evals[new].prompt_batch == 7
  assert config.evals[new].tag == new and config.evals[new].classes == hgr_config.EVAL_SETS[new]


def test_shipped_files_name_no_former_evaluator_key():
  """README, configs, benchmarks, tests and launch scripts use the new names (the old ones only as aliases)."""
  root = cli.REPO_ROOT
  files = [root / "README.md", *root.glob("configs/*.py"), *root.glob("benchmarks/*"), *root.glob("launch/*"),
           *root.glob("tests/*.py")]
  allowed = {root / "tests" / f"{name}.py" for name in ("test_config_overrides", "test_config_validation",
                                                          "test_bad_inputs")}  # the aliases and bad-key cases
  for path in files:
    if path in allowed or not path.is_file():
      continue
    text = path.read_text()
    for old in hgr_config.LEGACY_EVAL_NAMES:
      for use in (f"evals.{old}", f'evals["{old}"]', f"eval={old}", f'split="{old}"', f"levels_{old}."):
        assert use not in text, f"{path}: {use}"


def test_records_under_a_former_name_count_as_evaluated(tmp_path):
  """A finished run recorded as `21k_d` is not evaluated again after the rename (train_loop.missing_final_evals)."""
  writer = metrics.MetricWriter(tmp_path, tensorboard=False)
  writer.write(600, "21k_d", {"hit@1": 0.25})
  writer.write(600, "train", {"loss": 1.0})
  writer.close()
  evaluators = {}
  for name in ("in21k_d", "in21k_p"):
    ev = object.__new__(hgr_evaluator.Evaluator)  # only its name matters here; building one needs a dataset
    ev.name = name
    evaluators[name] = engine.Scheduled(ev, every_steps=0, at_start=False)
  assert evaluators["in21k_d"].evaluator.legacy_names == ("21k_d",)
  assert train_loop.missing_final_evals(evaluators, tmp_path, 600) == {"in21k_p"}
  assert train_loop.missing_final_evals(evaluators, tmp_path, 700) == {"in21k_d", "in21k_p"}
