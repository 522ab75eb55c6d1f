"""Build-once demo folders: keyed by the generator's arguments and version, atomic, race-safe."""
import json
import multiprocessing
import pathlib

import ml_collections
import pytest

from zsl_jax.data import demo_cache
from zsl_jax.projects.attr import config as attr_config
from zsl_jax.projects.attr.data import loading

FILES = ("a.txt", "b/c.txt", "d.bin")


def _write(work, _final, tag="x"):
  for name in FILES:
    (work / name).parent.mkdir(parents=True, exist_ok=True)
    (work / name).write_text(f"{tag} {name}")


def _entries(parent):
  return sorted(p.name for p in parent.iterdir())


def test_builds_once_and_rebuilds_when_params_or_version_change(tmp_path):
  calls = []

  def build(work, final):
    calls.append(final)
    _write(work, final)

  first = demo_cache.build_once(tmp_path, "demo", {"n": 1}, build, version=1)
  assert demo_cache.build_once(tmp_path, "demo", {"n": 1}, build, version=1) == first
  assert calls == [first] and first.parent == tmp_path and first.name.startswith("demo_")
  assert all((first / name).read_text() == f"x {name}" for name in FILES)
  info = json.loads((first / demo_cache.INFO_FILE).read_text())
  assert info == {"name": "demo", "version": 1, "params": {"n": 1}}
  other_params = demo_cache.build_once(tmp_path, "demo", {"n": 2}, build, version=1)
  other_version = demo_cache.build_once(tmp_path, "demo", {"n": 1}, build, version=2)
  assert len({first, other_params, other_version}) == 3 and len(calls) == 3
  assert _entries(tmp_path) == sorted(p.name for p in (first, other_params, other_version))  # no temp folders


def test_failed_build_leaves_nothing(tmp_path):
  def build(work, final):
    _write(work, final)
    raise RuntimeError("generator broke")

  with pytest.raises(RuntimeError, match="generator broke"):
    demo_cache.build_once(tmp_path, "demo", {}, build, version=1)
  assert _entries(tmp_path) == []


def test_arguments_include_the_generator_defaults():
  def gen(out_dir, name="AWA2", *, size=3, noise=0.1):
    del out_dir, name, size, noise

  assert demo_cache.arguments(gen, size=5) == {"name": "AWA2", "size": 5, "noise": 0.1}
  assert demo_cache.key({"a": 1, "b": 2}, 1) == demo_cache.key({"b": 2, "a": 1}, 1) != demo_cache.key({"a": 1}, 1)


def _race(parent, barrier, log, tag, out):
  """One concurrent builder: every builder has a full copy before any of them renames."""
  def build(work, final):
    _write(work, final, tag)
    (log / tag).touch()
    barrier.wait(timeout=120)

  out.put(str(demo_cache.build_once(parent, "demo", {"n": 1}, build, version=1)))


def test_concurrent_builders_end_with_one_complete_copy(tmp_path):
  ctx = multiprocessing.get_context("spawn")  # The parent has jax running: no fork.
  parent, log = tmp_path / "cache", tmp_path / "log"
  log.mkdir()
  n = 4
  barrier, out = ctx.Barrier(n), ctx.Queue()
  procs = [ctx.Process(target=_race, args=(parent, barrier, log, f"p{i}", out)) for i in range(n)]
  for p in procs:
    p.start()
  for p in procs:
    p.join()
  assert [p.exitcode for p in procs] == [0] * n
  results = [out.get() for _ in procs]
  assert len(_entries(log)) == n  # All four really built at the same time.
  assert len(set(results)) == 1 and _entries(parent) == [results[0].rsplit("/", 1)[-1]]
  winner = {(parent / results[0] / name).read_text().split()[0] for name in FILES}
  assert len(winner) == 1  # One builder's complete copy, not a mix.


def test_attr_demo_folder_follows_its_parameters(tmp_path):
  data = attr_config.data_config("AWA2", demo=True)
  data.update(demo_dir=str(tmp_path), demo_classes=8, demo_unseen=2, demo_val_classes=2, demo_attributes=6)
  first = loading.demo_files(data)
  assert loading.demo_files(data) == first
  noisier = ml_collections.ConfigDict(data.to_dict())
  noisier.demo_noise = 0.3
  second = loading.demo_files(noisier)
  assert second["hdf5"] != first["hdf5"]
  assert len(_entries(tmp_path)) == 2
  for files in (first, second):
    assert all(path.startswith(str(tmp_path)) and pathlib.Path(path).is_file() for path in files.values())
