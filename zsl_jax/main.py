"""Entry point: `python -m zsl_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.k=v]`.

Kept thin on purpose: flags, the trainer's `check_config` (every config switch, before anything is
written), platform set-up, optional multi-host initialisation, the resolved config written to
DIR/config.json, then `zsl_jax.engine.run`. Bad input ends with one line (`zsl_jax.cli`).
"""
import json
import logging
import os
import pathlib

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from zsl_jax import cli
from zsl_jax import projects
from zsl_jax.errors import TrainingDiverged
from zsl_jax.errors import UserError

logger = logging.getLogger(__name__)

COMMAND = "main"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/hgr_rn50.py:demo.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: config.json, checkpoints/, metrics.jsonl, plots/.")


def _fail(message, code=cli.EXIT_USER_ERROR):
  cli.fail(COMMAND, message, code)


def _user_error_in(error):
  """The UserError a config file raised, which config_flags wraps (with its traceback) into a flag error."""
  found = None
  while error is not None:
    if isinstance(error, UserError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def _parse_flags(argv):
  """absl parsing, turning config-override mistakes into one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    user_error = _user_error_in(e)
    if user_error is None and "Error whilst parsing config file" in str(e):
      raise  # A config file failed with something other than a UserError: a bug, keep its traceback.
    _fail(str(user_error or e))
  except (AttributeError, KeyError) as e:
    bad = next((a for a in argv[1:] if a.startswith("--config.")), "")
    key = str(e).strip("\"'")
    wrong = next((a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and
                  a.split("=")[0].split(".")[-1] == key), bad.split("=")[0])
    _fail(f"unknown config key {key!r} ({wrong}): not a field of the config; check the spelling "
          f"against the config file's get_config()")
  except UserError as e:
    _fail(str(e))
  except ValueError as e:  # config_flags cannot parse an override path, e.g. --config.evals.21k_d.type
    _fail(f"{e}; every part of a --config.a.b override must be a Python name")
  return None


def _setup_platform(config):
  import jax  # pylint: disable=import-outside-toplevel
  dist = config.distributed
  if dist.initialize or os.environ.get("ZSL_JAX_DISTRIBUTED"):
    kwargs = {}
    if dist.coordinator_address:
      kwargs["coordinator_address"] = dist.coordinator_address
    if dist.num_processes > 0:
      kwargs["num_processes"] = dist.num_processes
    if dist.process_id >= 0:
      kwargs["process_id"] = dist.process_id
    jax.distributed.initialize(initialization_timeout=dist.initialization_timeout,
                               heartbeat_timeout_seconds=dist.heartbeat_timeout_seconds, **kwargs)
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_threefry_partitionable", True)  # RNG values independent of sharding.


def _write_config(config, workdir):
  """DIR/config.json; a different earlier config is kept as config.<n>.json, never overwritten."""
  path = workdir / "config.json"
  text = json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)
  if path.exists() and path.read_text() != text:
    n = 1
    while (workdir / f"config.{n}.json").exists():
      n += 1
    path.rename(workdir / f"config.{n}.json")
  path.write_text(text)


def _setup_logging():
  """Our INFO lines on the console; library INFO chatter (Orbax logs every file it writes) hidden."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("zsl_jax").setLevel(logging.INFO)


def _check_evaluators(engine, config):
  """Every config.evals.<name>.type names an evaluator module (checked before anything is written)."""
  for name, ev in config.get("evals", {}).items():
    kind = ev.get("type")
    if not kind:
      raise UserError(f"config.evals.{name} has no 'type'; name an evaluator module, e.g. type='gzsl'")
    if "." not in kind and kind not in projects.EVALUATORS:
      raise UserError(f"config.evals.{name}.type={kind!r} is not one of: {', '.join(projects.EVALUATORS)} "
                      f"(or a dotted module path)")
    engine.import_by_convention(kind, "evaluators")


def main(argv):
  _setup_logging()
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; pass options as --flag=value")
  config = _CONFIG.value
  if config is None:
    _fail("--config is required, e.g. --config=configs/hgr_rn50.py:demo")
  workdir = _WORKDIR.value
  if not workdir:
    _fail("--workdir is required: the folder for checkpoints and metrics (re-using it resumes)")
  from zsl_jax import engine  # pylint: disable=import-outside-toplevel  (jax: after the flags are checked)
  try:
    trainer_cls = engine.trainer_class(config)
    trainer_cls.check_config(config)  # every config switch, before anything is written or traced
    _check_evaluators(engine, config)
    _setup_platform(config)
    import jax  # pylint: disable=import-outside-toplevel
    run = (config, pathlib.Path(workdir).expanduser())
    while run is not None:  # a method may ask for a follow-up run (e.g. retraining on trainval)
      config, workdir = run
      if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        _write_config(config, workdir)
      logger.info("zsl_jax: trainer=%s mode=%s workdir=%s devices=%d processes=%d",
                  config.trainer, config.mode, workdir, jax.device_count(), jax.process_count())
      engine.run(config, workdir)
      run = trainer_cls.next_run(config, workdir)
  except UserError as e:
    _fail(str(e))
  except TrainingDiverged as e:
    _fail(str(e), code=3)
  except KeyboardInterrupt:
    _fail("interrupted; re-run the same command to go on (a run resumes from its last checkpoint)",
          cli.EXIT_INTERRUPTED)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
