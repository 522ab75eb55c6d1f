"""Where region features live while a run reads them: host memory, a block cache over the hdf5, or a memory map.

- **memory**: the whole [N, R, F] float32 array in host memory, read once chunk-aware (`hdf5_rows`,
  parallel inflation). Chosen automatically when it fits `memory_budget` x MemAvailable
  (`/proc/meminfo`); `in_memory=True/False` overrides. A training step is one gather of its rows.
- **chunk-aware**: blocks (the file's chunk extent along the row axis) are read on demand into an LRU
  cache of the same budget. Training rows (`gather`) and evaluation scans (`row`) use separate caches,
  so an evaluation pass does not evict the training working set; training's is one slab that a step
  gathers from in one copy (`slab_cache`). Every sampler keeps its exact stream:
  the mode only decides how rows are read. Speed then depends on the sampler: the "window" sampler
  (`samplers.WindowSampler`) inflates each block once per epoch; the balanced and uniform samplers
  draw rows anywhere, at memory speed once the training split's blocks fit the cache, and otherwise
  at inflation speed (gzip: ~0.25 GB/s, ~600 rows/s per core), which the one-time conversion avoids.
- **memmap**: the uncompressed regions-major `.npy` written by `python -m zsl_jax.tools.convert_features`,
  memory-mapped; the page cache keeps what RAM allows and rows are never inflated.

The budget is per process: with several processes per host, divide `memory_budget` among them.
"""
import collections
import hashlib
import json
import logging
import os
import threading

import h5py
import numpy as np

from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import slab_cache

logger = logging.getLogger(__name__)

MEMORY_BUDGET = 0.5  # Default share of MemAvailable a run may fill with features.
SCAN_CACHE_BYTES = 64 << 20  # Evaluation's block cache: at least this, and at least two blocks.
GIB = 2 ** 30


def available_memory():
  """Bytes the kernel could give this process now without swapping (MemAvailable)."""
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(memory_budget):
  """Bytes features may fill: `memory_budget` x MemAvailable for a fraction in (0, 1], else that many bytes."""
  value = float(memory_budget)
  if value <= 0.0:
    raise UserError(f"config.data.memory_budget={memory_budget} must be a fraction of available memory in (0, 1] "
                    f"or a number of bytes above 1")
  return int(value * available_memory()) if value <= 1.0 else int(value)


def choose_in_memory(nbytes, in_memory, memory_budget):
  """(load into memory?, why): the override when given, else whether `nbytes` fits the budget."""
  if in_memory is not None:
    return bool(in_memory), f"config.data.in_memory={bool(in_memory)}"
  budget = budget_bytes(memory_budget)
  share = f" = {float(memory_budget):g} x {available_memory() / GIB:.2f} GiB available" if memory_budget <= 1 else ""
  fits = nbytes <= budget
  return fits, (f"{nbytes / GIB:.2f} GiB {'fits' if fits else 'exceeds'} the budget {budget / GIB:.2f} GiB{share}; "
                f"config.data.in_memory or memory_budget override it")


def l2_normalize_(feats):
  """DAZLE's normalize_F in place, per region (all-zero regions stay zero); [..., R, F] float32."""
  np.divide(feats, np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12), out=feats)
  return feats


def load_all(reader, normalize, group_bytes=256 << 20):
  """The whole [N, R, F] float32 array, read in block-aligned groups straight into place."""
  out = np.empty((reader.num_rows, reader.num_regions, reader.feature_dim), np.float32)
  group = reader.block_rows * max(1, group_bytes // (reader.block_rows * reader.row_bytes))
  for start in range(0, reader.num_rows, group):
    stop = min(start + group, reader.num_rows)
    reader.read_range(start, stop, out[start:stop])
    if normalize:
      l2_normalize_(out[start:stop])
  return out


class MemoryStore:
  """All rows in host memory (already normalised when asked)."""

  def __init__(self, array):
    self.array = array  # [N, R, F] float32

  def gather(self, rows):
    return self.array[rows]

  def row(self, i):
    return self.array[i]


class MemmapStore:
  """The converted `.npy` ([N, R, F] float32, regions-major), memory-mapped."""

  def __init__(self, path, normalize):
    self.path, self.normalize = os.fspath(path), normalize
    self._map = None

  def __getstate__(self):
    return {**self.__dict__, "_map": None}

  def _array(self):
    if self._map is None:
      self._map = np.load(self.path, mmap_mode="r")
    return self._map

  def gather(self, rows):
    out = np.asarray(self._array()[rows])  # One copy, from the page cache (or the disk).
    return l2_normalize_(out) if self.normalize else out

  def row(self, i):
    out = np.array(self._array()[i], np.float32)
    return l2_normalize_(out) if self.normalize else out


class BlockCache:
  """Thread-safe LRU {block: array} holding at most `capacity` bytes (and at least the blocks of one call).

  A block missing from the cache is read once even when several threads ask for it: the first one
  reads it, the others wait for it.
  """

  def __init__(self, capacity):
    self.capacity = int(capacity)
    self._blocks = collections.OrderedDict()
    self._pending = {}  # block -> threading.Event of the read in progress
    self._bytes = 0
    self._lock = threading.Lock()

  def peek(self, block):
    with self._lock:
      return self._blocks.get(block)

  def get_many(self, blocks, read):
    """{block: array} for `blocks`; `read(missing blocks) -> {block: array}` is called for the rest."""
    got, waits = {}, {}
    while True:
      mine = []
      with self._lock:
        for b in blocks:
          if b in got:
            continue
          if b in self._blocks:
            self._blocks.move_to_end(b)
            got[b] = self._blocks[b]
          elif b in self._pending:
            waits[b] = self._pending[b]
          else:
            self._pending[b] = threading.Event()
            mine.append(b)
      if mine:
        self._read(mine, read, got)
      for event in waits.values():
        event.wait()
      waits = {}
      if len(got) == len(blocks):
        return got

  def _read(self, mine, read, got):
    try:
      arrays = read(mine)
      with self._lock:
        for b, a in arrays.items():
          got[b] = self._blocks[b] = a
          self._bytes += a.nbytes
        while self._bytes > self.capacity and len(self._blocks) > len(mine):
          _, old = self._blocks.popitem(last=False)
          self._bytes -= old.nbytes
    finally:  # Waiters wake up also when the read failed (they retry it themselves).
      with self._lock:
        events = [self._pending.pop(b) for b in mine]
      for event in events:
        event.set()


class CachedStore:
  """Chunk-aware rows of an hdf5 through block caches: one for training batches, one for evaluation scans."""

  def __init__(self, reader, capacity, normalize):
    self.reader, self.capacity, self.normalize = reader, int(capacity), normalize
    self.block_bytes = reader.block_rows * reader.row_bytes
    self.scan_bytes = max(2 * self.block_bytes, SCAN_CACHE_BYTES)
    self.train_bytes = max(2 * self.block_bytes, self.capacity - self.scan_bytes)
    self._new_caches()

  def _new_caches(self):
    r = self.reader
    slots = max(2, min(r.num_blocks, self.train_bytes // self.block_bytes))
    self.train_cache = slab_cache.SlabCache(slots, r.block_rows, (r.num_regions, r.feature_dim), r.num_rows)
    self.scan_cache = BlockCache(self.scan_bytes)

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("train_cache", "scan_cache")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._new_caches()

  def describe(self):
    r = self.reader
    return (f"{r.describe()}; training cache {self.train_bytes / GIB:.2f} GiB "
            f"(~{min(r.num_blocks, self.train_bytes // self.block_bytes)} of {r.num_blocks} blocks)")

  def _normalized(self, parts):
    if self.normalize:
      for a in parts.values():
        l2_normalize_(a)
    return parts

  def _fill(self, parts):
    """Reads {block: destination [rows, R, F]} in place (the training slab's slots)."""
    return self._normalized(self.reader.fill_blocks(parts))

  def _read(self, blocks):
    return self._normalized(self.reader.read_blocks(blocks))

  def gather(self, rows):
    if rows.size and (rows.min() < 0 or rows.max() >= self.reader.num_rows):
      raise IndexError(f"feature rows must lie in [0, {self.reader.num_rows}); got {rows.min()}..{rows.max()}")
    blocks, offsets = np.divmod(rows, self.reader.block_rows)
    return self.train_cache.gather(blocks, offsets, self._fill)

  def row(self, i):
    b, off = divmod(int(i), self.reader.block_rows)
    cached = self.train_cache.copy_row(b, off)  # Evaluation reuses training blocks (a pinned copy).
    if cached is not None:
      return cached
    return self.scan_cache.get_many([b], self._read)[b][off]


def fingerprint(path, key="feature_map"):
  """What identifies a feature file cheaply: its byte size, the features' shape and a hash of its labels."""
  with h5py.File(path, "r") as f:
    labels = np.ascontiguousarray(f["labels"][()]) if "labels" in f else np.zeros(0)
    shape = list(f[key].shape)
  return {"bytes": os.path.getsize(path), "shape": shape, "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest()}


def sidecar_path(npy_path):
  return os.fspath(npy_path) + ".json"


def check_converted(npy_path, shape, fingerprint):
  """UserError unless `npy_path` is the conversion of the feature file with this shape and fingerprint."""
  try:
    with open(sidecar_path(npy_path), encoding="utf-8") as f:
      meta = json.load(f)
    header = np.load(npy_path, mmap_mode="r")
  except (OSError, ValueError) as e:
    raise UserError(f"{npy_path} is not a finished conversion ({e}); re-run python -m zsl_jax.tools.convert_features"
                    ) from e
  want = {"shape": list(shape), "fingerprint": fingerprint}
  got = {"shape": list(header.shape), "fingerprint": meta.get("fingerprint")}
  if got != want or header.dtype != np.float32:
    raise UserError(f"{npy_path} ({got['shape']}, {header.dtype}) was converted from another feature file than "
                    f"this one ({list(shape)}); delete it and re-run python -m zsl_jax.tools.convert_features")
