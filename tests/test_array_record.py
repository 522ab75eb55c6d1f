"""HGR-Net reads the same images from ArrayRecord packs (data.images=array_record) as from the folders.

On the HGR demo data, with one truncated test image and one deleted training image: packs written
by the tool's command line give bit-identical training batches and identical evaluation metrics;
missing or foreign packs stop the run with one line naming the command that fixes them.
"""
import json
import pathlib
import pickle
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import cli
from zsl_jax import metrics
from zsl_jax import sharding
from zsl_jax.errors import UserError
from zsl_jax.projects.hgr import trainer as hgr_trainer
from zsl_jax.projects.hgr.config import hgr_config
from zsl_jax.projects.hgr.data import array_record
from zsl_jax.projects.hgr.data import imagenet21k

CONFIG = "configs/hgr_rn50.py:demo"
METRICS = ("hit@1", "hit@2", "hit@5", "hit@10", "hit@20", "tor", "por", "path_ratio", "count", "skipped")


def _config(demo_root, records=None, mode="train"):
  c = hgr_config("demo")
  c.data.demo_root = str(demo_root)
  c.mode = mode
  if records is not None:
    c.data.images, c.data.array_record = "array_record", str(records)
  return c


def _pack(index_dir, out, *selections):
  proc = subprocess.run([sys.executable, "-m", "zsl_jax.tools.array_record", "--index", str(index_dir),
                         "--out", str(out), *[a for s in selections for a in ("--select", s)]],
                        cwd=cli.REPO_ROOT, env=cli.env(), capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """(demo root, index) with test row `bad` truncated and train row `gone` deleted after indexing."""
  root = tmp_path_factory.mktemp("hgr_demo_data")
  _, index = hgr_trainer.prepare_data(_config(root).data)
  bad, gone = int(index.rows("test", "rest")[5]), int(index.rows("train", "train")[3])
  data = pathlib.Path(index.path(bad)).read_bytes()
  pathlib.Path(index.path(bad)).write_bytes(data[:len(data) // 2])
  pathlib.Path(index.path(gone)).unlink()
  return root, index, bad, gone


def test_packs_serve_the_folder_batches_and_name_their_fix(demo, tmp_path):
  root, index, bad, gone = demo
  records = tmp_path / "records"
  assert "packed 336 images" in _pack(index.directory, records, "test:rest")
  with pytest.raises(UserError) as e:  # Training also needs the training split.
    hgr_trainer.prepare_data(_config(root, records).data, array_record.needed_selections(_config(root, records)))
  assert f"add them with: python -m zsl_jax.tools.array_record --index {index.directory} --out {records} " \
         "--select train:train" in str(e.value) and "\n" not in str(e.value)
  assert "packed 432 images" in _pack(index.directory, records, "train:train", "test:rest")  # Only the new ones.
  assert "already holds every selected image" in _pack(index.directory, records, "train:train")
  assert sorted(p.name for p in records.iterdir()) == ["pack-000", "pack-001"]

  mesh = sharding.make_mesh(dict(data=-1), jax.devices())
  folder = hgr_trainer.Trainer(_config(root), mesh)
  packed = hgr_trainer.Trainer(_config(root, records), mesh)
  assert isinstance(packed.index, array_record.PackedIndex) and not isinstance(folder.index, array_record.PackedIndex)
  a, b = folder.train_iterator(), packed.train_iterator()
  for _ in range(6):
    x, y = next(a), next(b)
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  # The unreadable files: stored as they were (truncated) or empty (deleted), skipped the same way.
  reader = pickle.loads(pickle.dumps(packed.index))  # What a grain worker receives.
  assert pickle.dumps(packed.index) == pickle.dumps(reader) and len(pickle.dumps(reader)) < 1000
  for row in (bad, gone, int(index.rows("test", "rest")[0])):
    want = imagenet21k.LoadImage(index, 32).map({"row": row})
    got = imagenet21k.LoadImage(reader, 32).map({"row": row})
    for k in want:
      np.testing.assert_array_equal(want[k], got[k], err_msg=k)
    assert bool(got["_skipped"]) == (row != int(index.rows("test", "rest")[0]))
  assert reader.read(gone)[0] == b"" and index.read(gone)[0] == index.path(gone)  # Bytes from the packs.


def test_missing_or_foreign_packs_are_one_line_errors(demo, tmp_path):
  root, index, _, _ = demo
  selections = [("test", "rest")]
  with pytest.raises(UserError, match=f"no ArrayRecord packs in {tmp_path / 'none'}; write them with: python -m "
                                      f"zsl_jax.tools.array_record --index {index.directory} --out "):
    hgr_trainer.prepare_data(_config(root, tmp_path / "none").data, selections)
  records = tmp_path / "records"
  _pack(index.directory, records, "test:rest")
  meta = json.loads((records / "pack-000" / "pack.json").read_text())
  shutil.copytree(records / "pack-000", records / "pack-001")
  (records / "pack-001" / "pack.json").write_text(json.dumps({**meta, "index_fingerprint": "0" * 40}))
  with pytest.raises(UserError, match="pack-001 was packed from another image index"):
    hgr_trainer.prepare_data(_config(root, records).data, selections)
  with pytest.raises(UserError, match="holds packs of another image index"):
    array_record.pack(index, [("train", "train")], records)
  c = _config(root).data
  c.images = "lmdb"
  with pytest.raises(UserError, match="data.images='lmdb'; use 'folder' or 'array_record'"):
    hgr_trainer.prepare_data(c)


def test_interrupted_pack_resumes_keeping_finished_shards(demo, tmp_path, monkeypatch):
  _, index, _, _ = demo
  write, calls = array_record._write_shard, []  # pylint: disable=protected-access

  def interrupted(*args):
    calls.append(args[2].name)
    if len(calls) == 3:
      raise KeyboardInterrupt
    write(*args)

  monkeypatch.setattr(array_record, "_write_shard", interrupted)
  with pytest.raises(KeyboardInterrupt):
    array_record.pack(index, [("test", "rest")], tmp_path, records_per_shard=100)
  monkeypatch.setattr(array_record, "_write_shard", write)
  packed = array_record.PackedIndex(index.directory, tmp_path)
  with pytest.raises(UserError, match="no ArrayRecord packs"):  # The unfinished pack is not used.
    packed.check([("test", "rest")])
  done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "pack-000").glob("*.array_record")}
  assert sorted(done) == ["shard-00000.array_record", "shard-00001.array_record"]
  assert array_record.pack(index, [("test", "rest")], tmp_path, records_per_shard=100) == 336
  assert {p: (tmp_path / "pack-000" / p).stat().st_mtime_ns for p in done} == done
  assert sorted(p.name for p in tmp_path.iterdir()) == ["pack-000"]
  packed = array_record.PackedIndex(index.directory, tmp_path)
  packed.check([("test", "rest")])
  for row in index.rows("test", "rest")[::7]:
    assert packed.read(row)[0] == pathlib.Path(index.path(row)).read_bytes()


def test_eval_mode_metrics_match_the_folder_run(demo, tmp_path):
  """Only the test set is packed (evaluation needs no training images); the image folders are hidden meanwhile."""
  root, index, _, _ = demo
  data = f"--config.data.demo_root={root}"
  cli.run_main(CONFIG, tmp_path / "train", data, "--config.total_steps=2", "--config.checkpoint.every_steps=2")
  _pack(index.directory, tmp_path / "records", "test:rest")
  images = pathlib.Path(index.meta["roots"]["imagenet21k"])  # The test images' folders, hidden meanwhile.
  images.rename(tmp_path / "hidden")
  try:
    cli.run_main(CONFIG, tmp_path / "eval", data, "--config.mode=eval",
                 f"--config.init.checkpoint={tmp_path / 'train'}", "--config.data.images=array_record",
                 f"--config.data.array_record={tmp_path / 'records'}")
  finally:
    (tmp_path / "hidden").rename(images)
  want = metrics.read_metrics(tmp_path / "train", split="in21k_d")[-1]  # The folder run's final evaluation.
  (got,) = metrics.read_metrics(tmp_path / "eval", split="in21k_d")
  assert want["step"] == got["step"] == 2
  assert want["skipped"] == 1 and want["count"] == 336 - 1
  assert {k: got[k] for k in METRICS} == {k: want[k] for k in METRICS}
