"""Metrics stream: `metrics.jsonl`, TensorBoard events and console lines, from process 0 only.

Every record has `step` and `split` ("train", or an evaluator's name) plus metric values, so
one file holds the whole history of a run, resumed runs appended. Only process 0 writes the file,
so any decision read from it is taken there and broadcast (`decided_on_main`).

A kill or a full disk can leave the last line torn: readers skip it with a warning and the writer,
on opening the file to append (a resumed run), cuts it away; a damaged line elsewhere is a UserError.
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

from zsl_jax import errors

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
    repair(self.path)
    self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
    if tensorboard:
      self._tb = _summary_writer_class()(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, step, split, metrics):
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    line = json.dumps(record) + "\n"
    try:
      self._file.write(line)
      self._file.flush()
    except OSError as e:
      if errors.is_no_space(e):
        raise errors.disk_full(self.path.parent, len(line), f"a {split} record to {self.path.name}",
                               "the checkpoints are intact") from None
      raise
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
    if not self.enabled or self._file.closed:
      return
    try:
      self._file.close()
    except OSError as e:  # The final flush of a full disk: the records were flushed line by line already.
      logger.warning("closing %s: %s", self.path, e)
    if self._tb is not None:
      self._tb.close()


def _parse(raw):
  try:
    record = json.loads(raw)
  except ValueError:  # Also UnicodeDecodeError (e.g. the NUL bytes a crash can leave).
    return None
  return record if isinstance(record, dict) else None


def _parse_lines(path):
  """(records of `path`, byte offset where a torn last line starts or the file's size, torn?).

  Only the last non-blank line may be damaged (torn); a damaged line before it is a UserError.
  """
  data = path.read_bytes()
  lines = data.split(b"\n")
  records, start = [], 0
  for number, raw in enumerate(lines, 1):
    if raw.strip():
      record = _parse(raw)
      if record is None:
        if any(rest.strip() for rest in lines[number:]):
          raise errors.UserError(f"{path} line {number} is not a JSON record; delete or fix that line "
                                 f"(only a torn last line is repaired automatically)")
        return records, start, True
      records.append(record)
    start += len(raw) + 1
  return records, len(data), False


def repair(path):
  """Cuts a torn last line off `path` (what a kill or a full disk leaves) so appended records start clean."""
  path = pathlib.Path(path)
  if not path.exists():
    return
  _, good_end, torn = _parse_lines(path)
  if torn:
    logger.warning("%s: removing a torn last line (%d bytes) left by an interrupted run", path,
                   path.stat().st_size - good_end)
    with open(path, "r+b") as f:
      f.truncate(good_end)
  if good_end and not path.read_bytes().endswith(b"\n"):  # A complete last record whose newline was cut.
    with open(path, "ab") as f:
      f.write(b"\n")


def _records(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  records, _, torn = _parse_lines(path)
  if torn:
    logger.warning("%s: ignoring a torn last line (an interrupted write; the next run here removes it)", path)
  return records


def read_metrics(workdir, split=None):
  """All records of `workdir/metrics.jsonl` (optionally one split); later duplicates of a step win."""
  records = {}
  for r in _records(workdir):
    if split is None or r["split"] == split:
      records[(r["split"], r["step"])] = r
  return [records[k] for k in sorted(records, key=lambda k: (k[1], k[0]))]


def last_record(workdir):
  """The last intact record of `workdir/metrics.jsonl` in file order, or None (no file, no records)."""
  if not (pathlib.Path(workdir) / "metrics.jsonl").exists():
    return None
  records = _records(workdir)
  return records[-1] if records else None


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
