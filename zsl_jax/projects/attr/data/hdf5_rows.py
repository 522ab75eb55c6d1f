"""Chunk-aware reads of a DAZLE `feature_map` [N, F, *S] hdf5 dataset as regions-major float32 rows [n, R, F].

h5py inflates chunk by chunk under one global lock, and a fancy-indexed read inflates every chunk the
rows touch, once per call. The official DAZLE files use h5py's default chunks, (1167, 64, 1, 1) for
AWA2: one chunk holds 1,167 images x 64 channels of one region, so one row touches 1,568 chunks and
468 MB of inflated data. Rows are therefore read here in *blocks*, the chunk's extent along the row
axis (1,167 rows there, 1 row in zsl_jax's own files). The chunk index is read once (`chunk_iter`);
each chunk's bytes are read with `os.pread` and inflated (libdeflate, else zlib) in a thread pool (both
release the GIL) and written straight into its place in the regions-major output, so no transpose pass follows.

Read directly: chunked datasets with no filter or gzip alone (zsl_jax's and DAZLE's files) and
contiguous ones (memory-mapped at their file offset). Other filters (shuffle, lzf, checksums, ...)
fall back to h5py slices of whole blocks: the same values, inflated serially.
"""
from concurrent import futures
import logging
import math
import os
import threading
import zlib

import h5py
import numpy as np

from zsl_jax.errors import UserError

try:
  import deflate as libdeflate  # libdeflate: the same bytes as zlib, 2.3x its inflation speed here (GIL released)
except ImportError:  # pragma: no cover - an optional accelerator; setup.py installs it
  libdeflate = None

logger = logging.getLogger(__name__)

DEFLATE = 1  # H5Z_FILTER_DEFLATE, gzip's filter id.
CONTIGUOUS_BLOCK_BYTES = 64 << 20  # Block size for unchunked datasets (they have no natural unit).


def default_threads():
  """Inflating threads: the cores this process may use (capped at 16)."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    cores = os.cpu_count() or 1
  return max(1, min(16, cores))


_POOLS = {}  # (pid, threads) -> executor shared by every reader of this process (its tasks never submit tasks)
_POOLS_LOCK = threading.Lock()


def _pool(threads):
  key = (os.getpid(), threads)
  with _POOLS_LOCK:
    if key not in _POOLS:
      _POOLS[key] = futures.ThreadPoolExecutor(threads, thread_name_prefix="hdf5_rows")
    return _POOLS[key]


def inflate(raw, size):
  """One gzip-filtered chunk (a zlib stream) -> its `size` bytes; libdeflate when installed, else zlib.

  Inflation bounds every gzip read of these files (loading them into memory, filling the chunk-aware
  cache, converting them): on the 2-core machine zlib inflated AWA2-shaped rows at ~255 MB/s per
  core and libdeflate at ~580 MB/s; loading all of AWA2 into memory (`benchmarks/dazle_input.py
  --scale 1`, setup column) went from 40 to 22 s.
  """
  try:
    if libdeflate is not None:
      return libdeflate.zlib_decompress(raw, size)
    return zlib.decompress(raw, bufsize=size)
  except (zlib.error, getattr(libdeflate, "DeflateError", zlib.error)) as e:
    raise CorruptChunkError(f"a gzip chunk does not inflate to {size} bytes ({e})") from e


class CorruptChunkError(ValueError):
  """A stored chunk of the feature file is damaged."""


def _layout(d):
  """('chunks' (no filter or gzip alone) | 'contiguous' (unfiltered, allocated) | 'h5py' (anything else), gzip)."""
  plist = d.id.get_create_plist()
  filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
  if d.chunks is None:
    plain = not filters and d.external is None and d.id.get_offset() is not None
    return ("contiguous" if plain else "h5py"), False
  return ("chunks" if filters in ([], [DEFLATE]) else "h5py"), DEFLATE in filters


def _chunk_index(d, block_rows):
  """{block: [(coords after the row axis, byte offset, size, filter mask), ...]} of the allocated chunks."""
  index = {}

  def add(info):
    coord = tuple(int(c) for c in info.chunk_offset)
    index.setdefault(coord[0] // block_rows, []).append((coord[1:], int(info.byte_offset), int(info.size),
                                                         int(info.filter_mask)))
  try:
    d.id.chunk_iter(add)
  except AttributeError:  # HDF5 < 1.14: one lookup per chunk.
    for i in range(d.id.get_num_chunks()):
      add(d.id.get_chunk_info(i))
  return index


class Hdf5Rows:
  """Blocks of rows of an hdf5 feature dataset, read chunk-aware; picklable (handles reopen per process)."""

  def __init__(self, path, key="feature_map", threads=None):
    self.path, self.key = os.fspath(path), key
    self.threads = int(threads or default_threads())
    with h5py.File(self.path, "r") as f:
      d = f[key]
      self.shape, self.dtype, self.chunks = tuple(d.shape), d.dtype, d.chunks
      self.fill = d.fillvalue
      self.layout, self.gzip = _layout(d)
      self.offset = d.id.get_offset() if self.layout == "contiguous" else None
      self.row_bytes = int(np.prod(self.shape[1:])) * 4  # As float32.
      self.block_rows = int(self.chunks[0]) if self.chunks else max(1, CONTIGUOUS_BLOCK_BYTES // self.row_bytes)
      self._index = _chunk_index(d, self.block_rows) if self.layout == "chunks" else None
    self.num_rows, self.feature_dim = self.shape[0], self.shape[1]
    self.spatial = self.shape[2:]
    self.num_regions = int(np.prod(self.spatial))
    self.num_blocks = math.ceil(self.num_rows / self.block_rows)
    self._chunk_bytes = int(np.prod(self.chunks)) * self.dtype.itemsize if self.chunks else 0
    self._open = None  # (pid, fd or memmap or h5py file, pool)
    self._lock = threading.Lock()

  def __getstate__(self):
    return {**self.__dict__, "_open": None, "_lock": None}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def describe(self):
    """One phrase for the log: layout and block size."""
    what = {"chunks": f"chunks {self.chunks}" + (" gzip" if self.gzip else ""), "contiguous": "contiguous",
            "h5py": f"chunks {self.chunks} with other filters, read through h5py"}[self.layout]
    return f"{what}, blocks of {self.block_rows} rows ({self.block_rows * self.row_bytes / 2**20:.0f} MiB)"

  def _handles(self):
    """(file handle, thread pool) of this process, opened on first use (grain workers fork or spawn)."""
    opened = self._open
    if opened is None or opened[0] != os.getpid():
      with self._lock:
        opened = self._open
        if opened is None or opened[0] != os.getpid():
          if self.layout == "chunks":
            handle = os.open(self.path, os.O_RDONLY)
          elif self.layout == "contiguous":
            handle = np.memmap(self.path, self.dtype, "r", offset=self.offset, shape=self.shape)
          else:
            handle = h5py.File(self.path, "r")[self.key]
          opened = self._open = (os.getpid(), handle, _pool(self.threads))
    return opened[1], opened[2]

  def block_range(self, block):
    start = block * self.block_rows
    return start, min(start + self.block_rows, self.num_rows)

  def read_blocks(self, blocks):
    """{block: float32 [rows of the block, R, F]} for each block id, read in parallel."""
    out = {}
    for b in blocks:
      start, stop = self.block_range(int(b))
      out[int(b)] = np.empty((stop - start, self.num_regions, self.feature_dim), np.float32)
    return self.fill_blocks(out)

  def fill_blocks(self, parts):
    """Reads each {block: destination float32 [rows of the block, R, F]} in place, in parallel."""
    self._fill(parts)
    return parts

  def read_range(self, start, stop, out):
    """Rows [start, stop) into `out` [stop - start, R, F]; `start` must begin a block."""
    if start % self.block_rows:
      raise ValueError(f"read_range starts at {start}, not at a block boundary of {self.block_rows} rows")
    parts = {}
    for b in range(start // self.block_rows, math.ceil(stop / self.block_rows)):
      lo, hi = self.block_range(b)
      parts[b] = out[lo - start:min(hi, stop) - start]
    self._fill(parts)
    return out

  def _fill(self, parts):
    handle, pool = self._handles()
    if self.layout == "chunks":
      tasks = []
      for b, dest in parts.items():
        chunks = self._index.get(b, [])
        if len(chunks) < math.prod(math.ceil(s / c) for s, c in zip(self.shape[1:], self.chunks[1:])):
          dest[...] = self.fill  # Unwritten chunks read as the fill value, as h5py does.
        tasks += [(dest, c) for c in chunks]
      list(pool.map(lambda t: self._place(handle, *t), tasks))
      return
    for b, dest in parts.items():
      start = b * self.block_rows
      if self.layout == "contiguous":
        rows = handle[start:start + dest.shape[0]]
      else:
        with self._lock:  # One h5py call at a time per reader.
          rows = handle[start:start + dest.shape[0]]
      dest[...] = np.asarray(rows).reshape(dest.shape[0], self.feature_dim, self.num_regions).transpose(0, 2, 1)

  def _place(self, fd, dest, chunk):
    """Inflates one chunk [cr, cf, *cs] into its place in dest [rows, R, F]."""
    coord, offset, size, mask = chunk
    raw = os.pread(fd, size, offset)
    if self.gzip and not mask & 1:
      try:
        raw = inflate(raw, self._chunk_bytes)
      except CorruptChunkError as e:
        raise UserError(f"{self.path}: the {self.key} chunk at byte {offset} is damaged: {e}; the file is "
                        f"truncated or corrupt: extract or copy it again") from e
    a = np.frombuffer(raw, self.dtype).reshape(self.chunks)
    f0, s0 = coord[0], coord[1:]
    index = tuple(slice(0, min(c, n - o)) for c, n, o in zip(self.chunks[1:], self.shape[1:], coord))
    a = a[(slice(0, dest.shape[0]),) + index]  # [rows, cf', *cs']
    view = dest.reshape((dest.shape[0],) + self.spatial + (self.feature_dim,))
    place = tuple(slice(o, o + a.shape[i + 2]) for i, o in enumerate(s0)) + (slice(f0, f0 + a.shape[1]),)
    view[(slice(None),) + place] = np.moveaxis(a, 1, -1)

