"""The training rows' block cache: equal-size blocks in one preallocated array, gathered in one copy.

A dict of separately allocated blocks costs a Python-level copy per row and scatters the rows over
the heap; with one-row blocks (zsl_jax's files) that made a cached step ~30 % dearer than the
in-memory gather. Here every cached block owns a *slot* of one slab [slots, block_rows, R, F], so a
batch is one fancy-indexed copy `slab[slot, offset]`, as in host memory.

Concurrency (grain reads batches in several threads): a block missing from the cache is read once,
by the first thread that asks; the others wait for it. A slot is *pinned* while a call copies out of
it, and only unpinned blocks are evicted (least recently used first), so a slot is never refilled
under a reader. Blocks that find no free or evictable slot (one call needing more blocks than the
slab has) are read into arrays of their own for that call only.
"""
import collections
import threading

import numpy as np


class SlabCache:
  """LRU {block: slot} over a [slots, block_rows, R, F] float32 slab; pages are committed as blocks arrive."""

  def __init__(self, slots, block_rows, row_shape, num_rows):
    self.block_rows, self.num_rows = int(block_rows), int(num_rows)
    self.slab = np.empty((int(slots), self.block_rows) + tuple(row_shape), np.float32)  # [S, rows, R, F]
    self.slot_of = np.full(-(-self.num_rows // self.block_rows), -1, np.int64)  # block -> slot, -1: not cached
    self._lru = collections.OrderedDict()  # cached block -> slot, least recently used first
    self._pins = [0] * int(slots)
    self._free = list(range(int(slots)))[::-1]
    self._pending = {}  # block -> threading.Event of the read in progress
    self._lock = threading.Lock()

  def __contains__(self, block):
    with self._lock:
      return block in self._lru

  def _rows(self, block):
    return min(self.block_rows, self.num_rows - block * self.block_rows)

  def _claim_slot(self):
    """A free slot, else the least recently used unpinned block's (evicted); None when every slot is pinned."""
    if self._free:
      return self._free.pop()
    for block, slot in self._lru.items():
      if not self._pins[slot]:
        del self._lru[block]
        self.slot_of[block] = -1
        return slot
    return None

  def _read(self, mine, read_into):
    """Fills the slots this call claimed, then publishes them (or frees them if the read failed)."""
    if not mine:
      return
    ok = False
    try:
      read_into({b: self.slab[slot, :self._rows(b)] for b, slot in mine.items()})
      ok = True
    finally:  # Waiters wake up also when the read failed (they retry it themselves).
      with self._lock:
        for b, slot in mine.items():
          if ok:
            self._lru[b] = slot
            self.slot_of[b] = slot
          else:
            self._free.append(slot)
          self._pending.pop(b).set()

  def gather(self, blocks, offsets, read_into):
    """Rows given as (blocks [n], offsets [n]) int64 -> float32 [n, R, F].

    `read_into({block: destination [rows of the block, R, F]})` fills the missing blocks.
    """
    todo = {int(b) for b in np.unique(blocks)}
    pinned, own = [], {}  # slots this call pinned; {block: array} read outside the slab
    try:
      while todo:
        mine, waits, overflow = {}, {}, []
        with self._lock:
          for b in todo:
            if b in self._lru:
              slot = self._lru[b]
              self._lru.move_to_end(b)
            elif b in self._pending:
              waits[b] = self._pending[b]
              continue
            else:
              slot = self._claim_slot()
              if slot is None:
                overflow.append(b)
                continue
              mine[b] = slot
              self._pending[b] = threading.Event()
            self._pins[slot] += 1
            pinned.append(slot)
        self._read(mine, read_into)
        if overflow:
          extra = {b: np.empty((self._rows(b),) + self.slab.shape[2:], np.float32) for b in overflow}
          read_into(extra)
          own.update(extra)
        for event in waits.values():
          event.wait()
        todo = set(waits)  # Looked up again: read by another thread, or read here if that failed.
      return self._copy(np.asarray(blocks, np.int64), np.asarray(offsets, np.int64), own)
    finally:
      with self._lock:
        for slot in pinned:
          self._pins[slot] -= 1

  def _copy(self, blocks, offsets, own):
    """The rows, from pinned slots (their `slot_of` cannot change) and this call's own blocks."""
    if not own:
      return self.slab[self.slot_of[blocks], offsets]
    mine = np.isin(blocks, list(own))
    out = np.empty((blocks.size,) + self.slab.shape[2:], np.float32)
    out[~mine] = self.slab[self.slot_of[blocks[~mine]], offsets[~mine]]
    for i in np.flatnonzero(mine):
      out[i] = own[int(blocks[i])][offsets[i]]
    return out

  def copy_row(self, block, offset):
    """A copy of one cached row, or None when its block is not cached (evaluation scans reuse training blocks)."""
    with self._lock:
      slot = self._lru.get(block)
      if slot is None:
        return None
      self._pins[slot] += 1
    try:
      return self.slab[slot, offset].copy()
    finally:
      with self._lock:
        self._pins[slot] -= 1
