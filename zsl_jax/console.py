"""What a person reads on the terminal: progress bars, log lines that do not break them, the closing summary.

Log records of the `zsl_jax` logger go through `tqdm.write` (`TqdmHandler`), which clears the open
bars, prints the line on its own and redraws them. The train bar says "compiling step…" without an
ETA until the first step returns (the compile time would otherwise make the ETA hours long), then
restarts its clock (`steady`), so the rate and ETA describe the steady state only.
"""
import contextlib
import contextvars
import logging
import pathlib
import sys

from tqdm import tqdm

from zsl_jax import metrics as metrics_lib

logger = logging.getLogger(__name__)

COMPILING = "compiling step…"
TRAINING = "train"
_COMPILE_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}]"
_EVAL_BAR = contextvars.ContextVar("zsl_jax_eval_bar", default=None)  # description of the open evaluation's bar


class TqdmHandler(logging.Handler):
  """A logging handler that prints each record on its own line above any open tqdm bar."""

  def emit(self, record):
    try:
      tqdm.write(self.format(record), file=sys.stderr)
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)


def install_handler(name="zsl_jax", level=logging.INFO):
  """Routes `name`'s records (INFO and up) through `TqdmHandler` only (not also through absl's root handler)."""
  log = logging.getLogger(name)
  if not any(isinstance(h, TqdmHandler) for h in log.handlers):
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
  log.setLevel(level)
  log.propagate = False


def train_bar(total, initial):
  """The train phase's bar, in its compile phase: a description that says so, no rate, no ETA."""
  return tqdm(total=total, initial=initial, desc=COMPILING, unit="step", dynamic_ncols=True, file=sys.stderr,
              mininterval=1.0, bar_format=_COMPILE_FORMAT)


def steady(bar):
  """Ends the bar's compile phase: the default layout, and rate/ETA measured from now on."""
  if bar is None or bar.desc.rstrip(": ") != COMPILING:
    return
  n = bar.n
  bar.bar_format = None
  bar.set_description(TRAINING, refresh=False)
  bar.reset()  # restarts the clock and the rate's moving averages (and sets n = 0)
  bar.initial = bar.n = bar.last_print_n = n
  bar.refresh()


@contextlib.contextmanager
def eval_bars(name, enabled):
  """While open, `eval_bar` gives `name`'s batches a bar (when `enabled`)."""
  token = _EVAL_BAR.set(f"eval {name}" if enabled else None)
  try:
    yield
  finally:
    _EVAL_BAR.reset(token)


def eval_bar(total):
  """A bar for the batches of the evaluation now running, or None when none is wanted; closes without a trace."""
  desc = _EVAL_BAR.get()
  if desc is None:
    return None
  return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr, mininterval=1.0,
              leave=False)


def _fmt(value):
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_lines(workdir, limit=8):
  """One line per split: its last record's step and (up to `limit`) metrics."""
  last = {}
  for r in metrics_lib.read_metrics(workdir):
    last[r["split"]] = r
  lines = []
  for split, r in last.items():
    keys = [k for k in r if k not in ("step", "split", "time") and isinstance(r[k], (int, float))]
    if split == "train":
      keys = [k for k in keys if k in ("loss", "step_time", "examples_per_sec")]
    shown = ", ".join(f"{k}={_fmt(r[k])}" for k in keys[:limit]) + (", …" if len(keys) > limit else "")
    lines.append(f"  {split} @ step {r['step']}: {shown}")
  return lines


def summary(config, workdir):
  """The closing summary (≤ 15 lines): last metrics, where the files are, how to evaluate or resume."""
  workdir = pathlib.Path(workdir)
  lines = [f"done: {config.mode} run in {workdir}"]
  if (workdir / "metrics.jsonl").exists():
    lines += _metrics_lines(workdir)[:8]
    lines.append(f"metrics:     {workdir / 'metrics.jsonl'}")
  for label, sub in (("checkpoints", "checkpoints"), ("plots", "plots")):
    if (workdir / sub).is_dir():
      lines.append(f"{label + ':':12} {workdir / sub}")
  data = config.get("data") or {}
  cache = next((data.get(k) for k in ("demo_root", "demo_dir") if data.get("demo") and data.get(k)), None)
  if cache:
    lines.append(f"data cache:  {pathlib.Path(cache).expanduser()}")
  if config.mode == "train":
    lines.append(f"evaluate:    the same command with --config.mode=eval --config.init.checkpoint={workdir} "
                 f"--workdir=NEW_FOLDER")
    lines.append("resume:      re-run the same command (a larger --config.total_steps extends the run)")
  return "\n".join(lines[:15])
