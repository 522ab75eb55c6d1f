"""Entry point: `python -m zsl_jax.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.k=v]`.

Kept thin on purpose: flags, the trainer's `check_config` (every config switch, before anything is
written), platform set-up, optional multi-host initialisation, the resolved config written to
DIR/config.json, then `zsl_jax.engine.run`. Bad input ends with one line (`zsl_jax.cli`).
Every workdir a command runs in is claimed first (`zsl_jax.workdir`: an exclusive lock, then the
stored config compared with the requested one) and held until the command ends.
"""
import contextlib
import logging
import os
import pathlib
import re
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags

from zsl_jax import cli
from zsl_jax import console
from zsl_jax import paths
from zsl_jax import projects
from zsl_jax import workdir as workdir_lib
from zsl_jax.errors import TrainingDiverged
from zsl_jax.errors import UserError

logger = logging.getLogger("zsl_jax.main")  # not __name__: `python -m` runs this module as __main__

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


def _config_file(argv):
  """The file part (before ':') of the --config argument, or None when there is none."""
  for i, arg in enumerate(argv[1:], 1):
    m = re.fullmatch(r"--?config(?:=(.*))?", arg, re.S)
    if m:
      value = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "")
      return value.split(":", 1)[0]
  return None


def _check_config_file(argv):
  """A missing or unreadable config file is named before config_flags defers it into a late traceback."""
  path = _config_file(argv)
  if path is None:
    return
  if not os.path.isfile(path):
    problem = "is a folder" if os.path.isdir(path) else "does not exist"
    _fail(f"config file {path!r} {problem}; pass a config file, e.g. --config=configs/hgr_rn50.py:demo")
  if not os.access(path, os.R_OK):
    _fail(f"config file {path!r} is not readable; fix its permissions")


def _fail_to_load(path, error):
  detail = ([line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__])[-1]
  _fail(f"cannot load the config file {path!r} ({detail}); pass a config file, e.g. --config=configs/hgr_rn50.py")


def _check_loaded(config, path):
  """What get_config() returned is a ConfigDict (config_flags raises a file's load errors only on first use)."""
  try:
    getattr(config, "keys", None)
  except OSError as e:
    _fail_to_load(path, e)
  if path is not None and not isinstance(config, ml_collections.ConfigDict):
    _fail(f"get_config() of {path!r} returned a {type(config).__name__}; return an ml_collections.ConfigDict")


HELP_FLAGS = {"--help": True, "-help": True, "-h": True, "-?": True, "--helpshort": True, "--helpfull": False}


def _help(argv):
  """--help / --helpshort / --helpfull print their text and exit 0 (absl's own help flags exit 1)."""
  for arg in argv[1:]:
    if arg in HELP_FLAGS:
      app.usage(shorthelp=HELP_FLAGS[arg], writeto_stdout=True)
      sys.exit(0)


def _parse_flags(argv):
  """absl parsing, turning config-file and config-override mistakes into one line instead of a traceback."""
  _help(argv)
  _check_config_file(argv)
  try:
    parsed = flags.FLAGS(argv)
  except flags.Error as e:
    user_error = _user_error_in(e)
    if user_error is None and "get_config() takes 0 positional arguments" in str(e):
      _fail(f"config file {_config_file(argv)!r} takes no arguments after ':'; drop them")
    if user_error is None and "Error whilst parsing config file" in str(e):
      raise  # A config file failed with something other than a UserError: a bug, keep its traceback.
    _fail(str(user_error or e))
  except SyntaxError as e:
    _fail(f"config file {e.filename} line {e.lineno} is not valid Python ({e.msg}); fix it or pass another "
          f"config file, e.g. --config=configs/hgr_rn50.py")
  except (AttributeError, KeyError) as e:
    if "get_config" in str(e):
      _fail(f"config file {_config_file(argv)!r} defines no get_config(arg=None); pass a file from configs/")
    bad = next((a for a in argv[1:] if a.startswith("--config.")), "")
    key = str(e).strip("\"'")
    wrong = next((a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and
                  a.split("=")[0].split(".")[-1] == key), bad.split("=")[0])
    _fail(f"unknown config key {key!r} ({wrong}): not a field of the config; check the spelling "
          f"against the config file's get_config()")
  except UserError as e:
    _fail(str(e))
  except ValueError as e:  # config_flags cannot parse an override path, e.g. --config.evals.1st.type
    _fail(f"{e}; every part of a --config.a.b override must be a Python name")
  except OSError as e:  # A config file that failed to load, met by an override (config_flags defers the error).
    _fail_to_load(_config_file(argv), e)
  _check_loaded(_CONFIG.value, _config_file(argv))
  return parsed


def _connect_collectives(jax):
  """One collective over every device right after start-up, while the processes are in step.

  On CPU, gloo connects the processes at their first collective and gives up when they arrive more
  than 30 s apart (not configurable; measured on jax 0.10: "Gloo context initialization failed:
  GetKeyValue() timed out"). Left to the first evaluation or train step, a process that compiles
  slower on a loaded machine hits that. Once connected, a later collective waited 45 s without error.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("zsl_jax: collectives connected")


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
    _connect_collectives(jax)
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_threefry_partitionable", True)  # RNG values independent of sharding.


def _setup_logging():
  """Our INFO lines on the console, each on its own line above any progress bar; library INFO chatter hidden.

  absl (Orbax logs every file it writes) and the root logger (grain, jax) stay at WARNING.
  """
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)
  console.install_handler("zsl_jax", logging.INFO)


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
    paths.check_writable_dir(workdir, "--workdir")  # before anything is checked or written
    trainer_cls = engine.trainer_class(config)
    trainer_cls.check_config(config)  # every config switch, before anything is written or traced
    _check_evaluators(engine, config)
    _setup_platform(config)
    import jax  # pylint: disable=import-outside-toplevel
    run = (config, pathlib.Path(workdir).expanduser().absolute())
    with contextlib.ExitStack() as held:  # every workdir of the command stays locked until it ends
      while run is not None:  # a method may ask for a follow-up run (e.g. retraining on trainval)
        config, workdir = run
        held.enter_context(workdir_lib.claim(config, workdir))  # lock, compare configs, write config.json
        logger.info("zsl_jax: trainer=%s mode=%s workdir=%s devices=%d processes=%d",
                    config.trainer, config.mode, workdir, jax.device_count(), jax.process_count())
        engine.run(config, workdir)
        if jax.process_index() == 0:
          print(console.summary(config, workdir), file=sys.stderr, flush=True)
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
