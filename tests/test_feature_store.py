"""DAZLE/VSMR feature modes: automatic memory choice, chunk-aware reads of both hdf5 layouts, the block cache,
the window sampler across hosts, and the memory-mappable conversion."""
import logging
import threading
import time
import zlib

import h5py
import numpy as np
import pytest

from configs import dazle_awa2
from zsl_jax.data import sampling
from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import dataset
from zsl_jax.projects.attr.data import feature_store
from zsl_jax.projects.attr.data import hdf5_rows
from zsl_jax.projects.attr.data import loading
from zsl_jax.projects.attr.data import region_features
from zsl_jax.projects.attr.data import samplers
from zsl_jax.projects.attr.data import slab_cache
from zsl_jax.projects.attr.tools import convert_features

N, F, H, W = 53, 20, 3, 3  # Rows, channels, regions grid: partial chunks on every axis below.
OFFICIAL = (12, 8, 1, 1)  # Like DAZLE's (1167, 64, 1, 1): a chunk spans many rows and few channels.


def _features(seed=0):
  x = np.random.default_rng(seed).standard_normal((N, F, H, W)).astype(np.float32)
  x[7] = 0.0  # An all-zero image (SUN's undecodable ones) must stay zero under normalisation.
  return np.maximum(x, 0.0)


def _write(path, feats, **create):
  """A complete DAZLE-layout file: feature_map plus the keys the readers check."""
  labels = np.arange(N) * 5 // N  # 5 classes, class-sorted rows
  with h5py.File(path, "w") as f:
    f.create_dataset("feature_map", data=feats, **create)
    f.create_dataset("labels", data=labels)
    f.create_dataset("trainval_loc", data=np.arange(0, N, 2))
    f.create_dataset("test_seen_loc", data=np.arange(1, 40, 2))
    f.create_dataset("test_unseen_loc", data=np.arange(41, N, 2))
    f.create_dataset("att", data=np.eye(5, 4))
    f.create_dataset("original_att", data=np.eye(5, 4))
    f.create_dataset("w2v_att", data=np.eye(4, 6))
  return labels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """The same features in the official layout, zsl_jax's, a filtered one, a contiguous one."""
  root = tmp_path_factory.mktemp("features")
  feats = _features()
  layouts = {"official": dict(chunks=OFFICIAL, compression="gzip"),
             "zsl_jax": dict(chunks=(1, F, H, W), compression="gzip", compression_opts=1),
             "shuffled": dict(chunks=(5, F, H, W), compression="gzip", shuffle=True),
             "contiguous": {}}
  paths = {}
  for name, create in layouts.items():
    paths[name] = root / f"{name}.hdf5"
    labels = _write(paths[name], feats, **create)
  regions = np.ascontiguousarray(feats.reshape(N, F, -1).transpose(0, 2, 1))
  return {"paths": paths, "feats": feats, "labels": labels, "regions": regions}


def test_every_layout_reads_the_h5py_rows(files):
  """Chunk-aware reads (blocks, batches, single rows; memory and cache) equal h5py's own rows."""
  rows = np.array([52, 0, 13, 13, 7, 24, 36, 51])
  for name, path in files["paths"].items():
    with h5py.File(path) as f:
      ref = f["feature_map"][np.unique(rows)].reshape(-1, F, H * W).transpose(0, 2, 1)
    ref = ref[np.searchsorted(np.unique(rows), rows)]
    reader = hdf5_rows.Hdf5Rows(path, threads=3)
    assert reader.layout == {"official": "chunks", "zsl_jax": "chunks", "shuffled": "h5py",
                             "contiguous": "contiguous"}[name]
    for in_memory in (True, False):
      src = region_features.RegionFeatureSource(path, files["labels"], in_memory=in_memory)
      np.testing.assert_array_equal(src.get_batch(rows), ref, err_msg=f"{name} in_memory={in_memory}")
      np.testing.assert_array_equal(src[51]["features"], files["regions"][51])
  assert hdf5_rows.Hdf5Rows(files["paths"]["official"]).block_rows == 12


@pytest.mark.parametrize("inflater", ["libdeflate", "zlib"])
def test_gzip_chunks_inflate_to_h5py_rows_with_either_inflater(files, monkeypatch, inflater):
  """libdeflate (installed by setup.py, the path that runs) and the zlib fallback read h5py's exact rows."""
  assert hdf5_rows.libdeflate is not None, "setup.py installs `deflate`; reinstall the package"
  if inflater == "zlib":
    monkeypatch.setattr(hdf5_rows, "libdeflate", None)
  for name in ("official", "zsl_jax"):
    with h5py.File(files["paths"][name]) as f:
      ref = f["feature_map"][:].reshape(N, F, H * W).transpose(0, 2, 1)
    reader = hdf5_rows.Hdf5Rows(files["paths"][name], threads=2)
    blocks = reader.read_blocks(range(reader.num_blocks))
    np.testing.assert_array_equal(np.concatenate([blocks[b] for b in range(reader.num_blocks)]), ref)
  with pytest.raises(hdf5_rows.CorruptChunkError, match="does not inflate to 1000 bytes"):
    hdf5_rows.inflate(zlib.compress(b"x" * 1000)[:-5], 1000)


def test_a_damaged_chunk_is_one_error_naming_the_file(tmp_path, files):
  path = tmp_path / "damaged.hdf5"
  path.write_bytes(files["paths"]["zsl_jax"].read_bytes())
  reader = hdf5_rows.Hdf5Rows(path)
  _, offset, size, _ = reader._index[3][0]  # pylint: disable=protected-access
  with open(path, "r+b") as f:
    f.seek(offset + size // 2)
    f.write(b"\xff" * 64)
  src = region_features.RegionFeatureSource(path, files["labels"], in_memory=False)
  np.testing.assert_array_equal(src.get_batch(np.array([2])), files["regions"][[2]])  # other rows still read
  with pytest.raises(UserError, match=r"damaged.hdf5: the feature_map chunk at byte \d+ is damaged"):
    src.get_batch(np.array([3]))


def test_normalised_and_unwritten_chunks(tmp_path, files):
  src = region_features.RegionFeatureSource(files["paths"]["official"], files["labels"], in_memory=False,
                                            normalize=True)
  regions = files["regions"]
  want = regions / np.maximum(np.linalg.norm(regions, axis=-1, keepdims=True), 1e-12)
  np.testing.assert_array_equal(src.get_batch(np.arange(N)), want)
  assert not src.get_batch(np.array([7])).any()
  mem = region_features.RegionFeatureSource(files["paths"]["zsl_jax"], files["labels"], in_memory=True, normalize=True)
  np.testing.assert_array_equal(mem.get_batch(np.arange(N)), want)
  path = tmp_path / "partial.hdf5"
  with h5py.File(path, "w") as f:  # Only the first row chunk was ever written.
    d = f.create_dataset("feature_map", (N, F, H, W), np.float32, chunks=OFFICIAL, compression="gzip", fillvalue=0.5)
    d[:12] = files["feats"][:12]
  out = hdf5_rows.Hdf5Rows(path).read_blocks([0, 4])
  np.testing.assert_array_equal(out[0], files["regions"][:12])
  assert out[4].shape == (5, H * W, F) and np.all(out[4] == 0.5)


def test_automatic_mode_follows_the_budget(files, monkeypatch, caplog):
  monkeypatch.setattr(feature_store, "available_memory", lambda: 1000)
  assert feature_store.choose_in_memory(500, None, 0.5)[0]
  fits, why = feature_store.choose_in_memory(501, None, 0.5)
  assert not fits and "exceeds the budget" in why and "0.5 x" in why
  assert feature_store.choose_in_memory(10 ** 9, True, 0.5) == (True, "config.data.in_memory=True")
  assert feature_store.choose_in_memory(1, False, 0.5)[0] is False
  assert feature_store.budget_bytes(2e9) == 2_000_000_000  # Above 1: bytes.
  with pytest.raises(UserError, match="memory_budget=0"):
    feature_store.budget_bytes(0)
  nbytes = N * F * H * W * 4
  monkeypatch.setattr(feature_store, "available_memory", lambda: 4 * nbytes)
  caplog.set_level(logging.INFO, logger=region_features.__name__)
  modes = {}
  for budget in (0.25, 0.24):
    caplog.clear()
    src = region_features.RegionFeatureSource(files["paths"]["official"], files["labels"], in_memory=None,
                                              memory_budget=budget)
    modes[budget] = src.mode
    lines = [r.getMessage() for r in caplog.records if r.name == region_features.__name__]
    assert len(lines) == 1 and ("fits the budget" if src.mode == "memory" else "exceeds the budget") in lines[0]
  assert modes == {0.25: "memory", 0.24: "chunked"}
  assert "blocks of 12 rows" in lines[0] and "convert_features" in lines[0]


def test_block_cache_reads_each_block_once_and_keeps_its_budget():
  calls, lock = [], threading.Lock()

  def read(blocks):
    with lock:
      calls.extend(blocks)
    return {b: np.full(10, b, np.float32) for b in blocks}  # 40 bytes each

  cache = feature_store.BlockCache(capacity=120)
  results = []
  threads = [threading.Thread(target=lambda: results.append(cache.get_many([1, 2, 3], read))) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(calls) == [1, 2, 3] and all(r[2][0] == 2 for r in results)  # 8 threads, one read per block
  cache.get_many([4], read)  # Evicts the least recently used block (1).
  assert cache.peek(1) is None and cache.peek(4) is not None
  assert cache.get_many([5, 6, 7, 8], read).keys() == {5, 6, 7, 8}  # One call may exceed the capacity.


def _block_values(parts, calls=None, lock=None, delay=0.0):
  """read_into for SlabCache tests: row r of block b holds 100 * b + r (after an optional delay)."""
  if calls is not None:
    with lock:
      calls.extend(parts)
  time.sleep(delay)
  for b, dest in parts.items():
    dest[...] = (100 * b + np.arange(dest.shape[0], dtype=np.float32))[:, None, None]
  return parts


def test_slab_cache_reads_each_block_once_evicts_unpinned_lru_and_overflows_one_call():
  calls, lock = [], threading.Lock()
  cache = slab_cache.SlabCache(slots=3, block_rows=4, row_shape=(2, 3), num_rows=30)  # 8 blocks, the last of 2 rows
  results = []
  blocks, offsets = np.array([1, 2, 3, 1]), np.array([0, 3, 1, 2])
  read = lambda parts: _block_values(parts, calls, lock, delay=0.01)  # noqa: E731
  threads = [threading.Thread(target=lambda: results.append(cache.gather(blocks, offsets, read))) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(calls) == [1, 2, 3]  # 8 threads, one read per block
  for r in results:
    np.testing.assert_array_equal(r[:, 0, 0], [100, 203, 301, 102])
  cache.gather(np.array([2]), np.array([0]), read)
  cache.gather(np.array([7]), np.array([1]), read)  # Evicts the least recently used block, 1.
  assert 1 not in cache and 2 in cache and 3 in cache and 7 in cache
  many = cache.gather(np.arange(8), np.zeros(8, np.int64), read)  # 8 blocks, 3 slots: the rest read for this call
  np.testing.assert_array_equal(many[:, 1, 2], 100 * np.arange(8))
  for b in (5, 6, 7):
    cache.gather(np.array([b]), np.array([0]), read)
  np.testing.assert_array_equal(cache.copy_row(7, 1), np.full((2, 3), 701, np.float32))  # the 2-row last block
  assert cache.copy_row(0, 0) is None


def test_slab_cache_never_refills_a_slot_under_a_reader():
  """Many threads, few slots, constant eviction: every row must come back with its own block's values."""
  cache = slab_cache.SlabCache(slots=4, block_rows=3, row_shape=(64, 32), num_rows=60)
  errors = []

  def work(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
      rows = rng.integers(0, 60, 3)
      got = cache.gather(rows // 3, rows % 3, lambda parts: _block_values(parts, delay=0.0005))
      want = (100 * (rows // 3) + rows % 3).astype(np.float32)
      if not (got == want[:, None, None]).all():
        errors.append(seed)

  threads = [threading.Thread(target=work, args=(s,)) for s in range(6)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors


def test_evaluation_scans_leave_the_training_cache(files):
  src = region_features.RegionFeatureSource(files["paths"]["official"], files["labels"], in_memory=False)
  store = src.store
  src.get_batch(np.array([0, 13]))
  for i in range(N):  # An evaluation pass, row by row.
    np.testing.assert_array_equal(src[i]["features"], files["regions"][i])
  assert 0 in store.train_cache and 1 in store.train_cache
  assert 4 not in store.train_cache and store.scan_cache.peek(4) is not None


def test_window_sampler_same_order_for_1_2_4_hosts_and_every_row_once(files):
  """Each host reads its slice of the same global batches, chunk-aware; one epoch covers the split once."""
  rows = np.arange(1, N, 2)[:24]  # 24 rows of the file (a split), spread over its blocks of 12 rows
  sampler = samplers.make_sampler("window", rows, files["labels"][rows], 8, seed=3, block_rows=12, window_rows=20)
  src = region_features.RegionFeatureSource(files["paths"]["official"], files["labels"], in_memory=False)
  load = samplers.LoadFeatures(src, np.arange(5))
  per_hosts = {}
  for hosts in (1, 2, 4):
    per_hosts[hosts] = [[sampling.batches(sampler, load, process_index=p, process_count=hosts)[step]
                         for p in range(hosts)] for step in range(6)]
  for hosts in (2, 4):
    for step in range(6):
      for key in ("index", "features", "label"):
        joined = np.concatenate([part[key] for part in per_hosts[hosts][step]])
        np.testing.assert_array_equal(joined, per_hosts[1][step][0][key])
  epoch = np.concatenate([per_hosts[1][s][0]["index"] for s in range(3)])  # 3 steps x 8 = one epoch
  assert sorted(epoch) == list(rows)
  np.testing.assert_array_equal(per_hosts[1][0][0]["features"], files["regions"][per_hosts[1][0][0]["index"]])
  blocks = epoch // 12  # 4 blocks of 6 split rows; windows of ceil(20 / 12) = 2 blocks = 12 rows.
  assert len(set(blocks[:12])) == 2 and set(blocks[:12]).isdisjoint(blocks[12:])
  second = np.concatenate([per_hosts[1][s][0]["index"] for s in range(3, 6)])
  assert sorted(second) == list(rows) and not np.array_equal(second, epoch)


def test_window_sampler_windows_are_whole_blocks():
  rows = np.arange(1000)
  sampler = samplers.WindowSampler(rows, 10, seed=0, block_rows=50, window_rows=120)  # windows of 3 blocks
  order = rows[sampler.permutation(0)]
  windows = order[:900].reshape(6, 150)  # 20 blocks = 6 full windows + 1 of 2 blocks
  for w in windows:
    assert np.unique(w // 50).size == 3 and np.array_equal(np.sort(w % 50), np.repeat(np.arange(50), 3))
  assert np.unique(order[900:] // 50).size == 2 and sorted(order) == list(rows)


def test_iterator_resumes_exactly_with_the_window_sampler(files):
  rows = np.arange(N)
  sampler = samplers.make_sampler("window", rows, files["labels"], 4, seed=1, block_rows=12, window_rows=12)
  src = region_features.RegionFeatureSource(files["paths"]["official"], files["labels"], in_memory=False)
  it = sampling.iterator(sampler, samplers.LoadFeatures(src, np.arange(5)))
  for _ in range(15):
    next(it)
  state = it.get_state()
  want = [next(it)["index"] for _ in range(3)]
  resumed = sampling.iterator(sampler, samplers.LoadFeatures(src, np.arange(5)))
  resumed.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(resumed)["index"], w)


def test_conversion_round_trip_is_exact(tmp_path, files, caplog, capsys):
  path = tmp_path / "feature_map_ResNet_101_AWA2.hdf5"
  _write(path, files["feats"], chunks=OFFICIAL, compression="gzip")
  assert convert_features.main(["--hdf5", str(path), "--threads", "2"]) == 0
  npy = tmp_path / "feature_map_ResNet_101_AWA2.npy"
  np.testing.assert_array_equal(np.load(npy), files["regions"])
  assert np.load(npy).dtype == np.float32
  caplog.set_level(logging.INFO, logger=region_features.__name__)
  mapped = dataset.load_zsl_dataset("AWA2", hdf5=str(path), features_npy=str(npy), in_memory=None,
                                    normalize_features=True)
  chunked = dataset.load_zsl_dataset("AWA2", hdf5=str(path), in_memory=False, normalize_features=True)
  assert mapped.features.mode == "memmap" and any("memory-mapped" in r.getMessage() for r in caplog.records)
  rows = np.array([3, 52, 3, 0])
  np.testing.assert_array_equal(mapped.features.get_batch(rows), chunked.features.get_batch(rows))
  np.testing.assert_array_equal(mapped.features[5]["features"], chunked.features[5]["features"])
  assert convert_features.main(["--hdf5", str(path)]) == 2  # Never overwrites a finished conversion.
  (tmp_path / "a_file").write_text("a file where a folder is expected\n")
  capsys.readouterr()
  assert convert_features.main(["--hdf5", str(path), "--out", str(tmp_path / "a_file" / "x.npy")]) == 2
  line = capsys.readouterr().err.strip()
  assert "--out" in line and "cannot be created" in line and "\n" not in line, line  # before any inflating
  config = dazle_awa2.get_config()  # A run on the hdf5 memory-maps the conversion found beside it.
  config.data.hdf5 = str(path)
  assert config.data.in_memory is None and loading.load_dataset(config).features.mode == "memmap"
  config.data.features_npy = str(tmp_path / "missing.npy")
  with pytest.raises(UserError, match="features_npy=.*missing.npy not found; run python -m zsl_jax.tools.convert"):
    loading.load_dataset(config)
  other = tmp_path / "other.hdf5"
  _write(other, files["feats"] * 2, chunks=OFFICIAL, compression="gzip")
  with h5py.File(other, "r+") as f:
    f["labels"][0] = 4  # Another dataset with the same shape.
  with pytest.raises(UserError, match="converted from another feature file"):
    dataset.load_zsl_dataset("AWA2", hdf5=str(other), features_npy=str(npy))
