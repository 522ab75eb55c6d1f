"""Metrics stream: `metrics.jsonl`, TensorBoard events and console lines, from process 0 only.

Every record has `step` and `split` ("train", or an evaluator's name) plus metric values, so
one file holds the whole history of a run, resumed runs appended. Only process 0 writes the file,
so any decision read from it is taken there and broadcast (`decided_on_main`).
"""
import json
import logging
import math
import pathlib
import sys
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

logger = logging.getLogger(__name__)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without dragging in torch (≈1 GB, seconds) when installed."""
  if "torch" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    return SummaryWriter
  sys.modules["torch"] = None  # tensorboardX tries `import torch` at import time; make it fail.
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    del sys.modules["torch"]
  return SummaryWriter


def _to_python(v):
  v = np.asarray(v)
  if v.ndim == 0:
    v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
      return str(v)  # JSON has no NaN/Inf; keep the information as text.
    return v
  return v.tolist()


class MetricWriter:
  """Appends metric records; a no-op on processes other than 0 (multi-host)."""

  def __init__(self, workdir, tensorboard=True, enabled=None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if not self.enabled:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    if tensorboard:
      self._tb = _summary_writer_class()(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, step, split, metrics):
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "split", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(f"{split}/{k}", v, int(step))
      self._tb.flush()
    scalars = ", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in record.items() if k not in ("step", "split", "time")
                        and isinstance(v, (int, float, str)))
    logger.info("[%s] step %d: %s", split, step, scalars)

  def close(self):
    if not self.enabled:
      return
    self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir, split=None):
  """All records of `workdir/metrics.jsonl` (optionally one split); later duplicates of a step win."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  records = {}
  for line in path.read_text().splitlines():
    if line.strip():
      r = json.loads(line)
      if split is None or r["split"] == split:
        records[(r["split"], r["step"])] = r
  return [records[k] for k in sorted(records, key=lambda k: (k[1], k[0]))]


def decided_on_main(decide):
  """`decide()` evaluated on process 0 only; every process returns its value, JSON round-tripped.

  For decisions read from files that only process 0 writes (metrics.jsonl): every host must take
  the same branch. The value travels as JSON text, so floats arrive bit-exact (a broadcast array
  would be float32 without x64), and a single process sees the same types (lists, not tuples).
  """
  text = json.dumps(decide()) if jax.process_index() == 0 else ""
  if jax.process_count() > 1:
    data = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.zeros(size, np.int32)
    buffer[:len(data)] = data
    text = bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer)).astype(np.uint8)).decode("utf-8")
  return json.loads(text)
