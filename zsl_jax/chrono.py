"""Throughput accounting for the train loop: step time, examples/s, data wait, compile time, FLOPs, MFU.

Modelled on big_vision's `chrono`, with host clocks only, so it adds no device sync to a step. The
loop reads each step's metrics one step late; `Chrono` closes a log interval at the end of the loop
iteration of its last step (or, for a record forced at a checkpoint, right after reading that step),
so every interval holds whole loop iterations, each with its one wait on the input iterator. Time
spent compiling, saving checkpoints and running evaluators is paused out of the interval.

`CompiledStep` compiles the jitted step ahead of time once per batch shape signature (HGR-Net's
prompt buckets change the step's input shapes), which times each compile exactly, logs each new
shape, and gives XLA's cost analysis. `Compiled.cost_analysis()` of an SPMD executable counts the
FLOPs of one device (a toy matmul on an 8-device CPU mesh reports 1/8 of its 1-device count), so
the step's FLOPs are that count times the devices of the mesh (replicated work counted on each).
"""
import contextlib
import dataclasses
import logging
import time

import jax

logger = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per chip, matched in order on the lower-cased `jax.devices()[0].device_kind`
# ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "TPU v4", "TPU v5 lite", "TPU v5p").
PEAK_BF16_FLOPS = (
    ("h100 pcie", 756e12),
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("v5 lite", 197e12),
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("tpu v5", 459e12),
    ("v4", 275e12),
)


def peak_flops_per_chip(device_kind):
  """Dense bf16 peak FLOP/s of one chip of this kind, or None when unknown (CPU, other GPUs)."""
  kind = str(device_kind).lower()
  for key, peak in PEAK_BF16_FLOPS:
    if key in kind:
      return peak
  return None


def mfu(flops_per_step, step_time, peak_per_chip, num_devices):
  """Model FLOPs utilisation: achieved FLOP/s over the mesh's peak (`flops_per_step` summed over devices)."""
  return flops_per_step / step_time / (peak_per_chip * num_devices)


def flops_per_device(compiled):
  """FLOPs of one device for one call of an AOT-compiled executable, or None without cost analysis."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Backends without it raise assorted errors.
    return None
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per executable.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def shape_signature(tree):
  """Hashable (structure, shapes, dtypes, shardings) of a batch: one compiled step per signature."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((x.shape, str(x.dtype), getattr(x, "sharding", None)) for x in leaves)


def _rows(batch, replicated_keys):
  """Examples fed to the step: the global leading dimension of the batch (padding rows included)."""
  sizes = {v.shape[0] for k, v in batch.items() if k not in replicated_keys and getattr(v, "ndim", 0)}
  return max(sizes) if sizes else 0


@dataclasses.dataclass(frozen=True)
class _Mark:
  """Cumulative counters at one instant (differences of two marks describe an interval)."""
  step: int
  time: float
  wait: float
  paused: float
  compile: float
  examples: int
  flops: float
  flops_known: bool


class Chrono:
  """Host-clock accounting of the train loop's log intervals."""

  def __init__(self, num_devices, device_kind, clock=time.perf_counter):
    self.clock = clock
    self.num_devices = int(num_devices)
    self.peak = peak_flops_per_chip(device_kind)
    self._wait = self._paused = self._compile = self._flops = 0.0
    self._examples = 0
    self._flops_known = True
    self._step = 0
    self._last = self._tick = None

  def _mark(self):
    return _Mark(self._step, self.clock(), self._wait, self._paused, self._compile, self._examples,
                 self._flops, self._flops_known)

  def start(self, step):
    """Opens the first interval at `step` (the loop's start or resume step)."""
    self._step = int(step)
    self._last = self._tick = self._mark()

  @contextlib.contextmanager
  def _adding_to(self, attr):
    t0 = self.clock()
    try:
      yield
    finally:
      setattr(self, attr, getattr(self, attr) + self.clock() - t0)

  def waiting(self):
    """Time blocked on the input iterator and host->device batch assembly."""
    return self._adding_to("_wait")

  def paused(self):
    """Time left out of the step time (checkpoints, evaluators, compiles)."""
    return self._adding_to("_paused")

  def compiled(self, seconds):
    self._compile += seconds

  def stepped(self, examples, flops):
    """One step dispatched with `examples` rows and `flops` (None: unknown) summed over the mesh."""
    self._step += 1
    self._examples += int(examples)
    self._flops += flops or 0.0
    self._flops_known = self._flops_known and flops is not None

  def tick(self):
    """The end of a loop iteration: the boundary of an interval whose record is read next iteration."""
    self._tick = self._mark()

  def interval(self, step):
    """Accounting of the steps since the previous call, ending at `step`; {} if none elapsed."""
    end = self._tick if self._tick.step == step else self._mark()
    start, self._last = self._last, end
    steps = end.step - start.step
    if steps <= 0:
      return {}
    wall = max(end.time - start.time - (end.paused - start.paused), 1e-9)
    out = {"step_time": wall / steps, "examples_per_sec": (end.examples - start.examples) / wall,
           "data_wait_fraction": min(max((end.wait - start.wait) / wall, 0.0), 1.0)}
    if end.compile > start.compile:
      out["compile_time"] = end.compile - start.compile
    if end.flops_known and end.flops > start.flops:
      out["flops"] = (end.flops - start.flops) / steps
      out["flops_per_sec"] = (end.flops - start.flops) / wall
      if self.peak:
        out["mfu"] = mfu(out["flops"], out["step_time"], self.peak, self.num_devices)
    return out


class CompiledStep:
  """The jitted (donating) train step, compiled ahead of time once per batch shape signature."""

  def __init__(self, jitted, chrono, num_devices, replicated_keys=()):
    self.jitted, self.chrono, self.num_devices = jitted, chrono, int(num_devices)
    self.replicated_keys = tuple(replicated_keys)
    self.executables = {}  # signature -> (compiled, flops summed over the mesh or None)

  def __call__(self, state, batch):
    key = shape_signature(batch)
    entry = self.executables.get(key)
    if entry is None:
      entry = self.executables[key] = self._compile(state, batch)
    compiled, flops = entry
    out = compiled(state, batch)
    self.chrono.stepped(_rows(batch, self.replicated_keys), flops)
    return out

  def _compile(self, state, batch):
    with self.chrono.paused():
      t0 = time.perf_counter()
      compiled = self.jitted.lower(state, batch).compile()
      seconds = time.perf_counter() - t0
    self.chrono.compiled(seconds)
    per_device = flops_per_device(compiled)
    flops = per_device * self.num_devices if per_device is not None else None
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    logger.info("compiled the train step in %.2f s (shape %d: %s; %s FLOPs per step)", seconds,
                len(self.executables) + 1, shapes, f"{flops:.3g}" if flops else "unknown")
    return compiled, flops


def postfix(accounting):
  """Short progress-bar fields of an interval's accounting."""
  out = {}
  if "step_time" in accounting:
    out["step_time"] = f"{accounting['step_time'] * 1e3:.3g}ms"
    out["ex/s"] = f"{accounting['examples_per_sec']:.4g}"
    out["wait"] = f"{accounting['data_wait_fraction']:.0%}"
  if "mfu" in accounting:
    out["mfu"] = f"{accounting['mfu']:.1%}"
  elif "flops_per_sec" in accounting:
    out["flop/s"] = f"{accounting['flops_per_sec']:.3g}"
  return out
