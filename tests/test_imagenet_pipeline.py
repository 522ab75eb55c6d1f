"""grain pipeline over the ImageNet-21K index: robust decode, exact eval, class-pure batches, resume."""
import hashlib
import io
import os
import shutil

import grain
import jax
import numpy as np
from PIL import Image
import pytest

from zsl_jax.data import sampling
from zsl_jax.data import transforms
from zsl_jax.projects.hgr.data import batchers
from zsl_jax.projects.hgr.data import demo as synthetic_imagenet
from zsl_jax.projects.hgr.data import imagenet21k
from zsl_jax.projects.hgr.tools import build_hierarchy
from zsl_jax.projects.hgr.tools import make_splits

S = 32  # Preprocessed image size in these tests (the pipeline default is 224).


def _corrupt_and_odd_files(folder):
  """3 undecodable files and 3 decodable oddities (CMYK, PNG behind .JPEG, greyscale)."""
  src = sorted(folder.iterdir())[0].read_bytes()
  (folder / "zz_truncated.JPEG").write_bytes(src[:len(src) // 2])
  (folder / "zz_garbage.JPEG").write_bytes(os.urandom(500))
  (folder / "zz_empty.JPEG").write_bytes(b"")
  rgb = np.asarray(Image.open(io.BytesIO(src)))
  buf = io.BytesIO()
  Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
  (folder / "zz_cmyk.JPEG").write_bytes(buf.getvalue())
  buf = io.BytesIO()
  Image.fromarray(rgb[::-1]).save(buf, format="PNG")
  (folder / "zz_png.JPEG").write_bytes(buf.getvalue())
  Image.fromarray(rgb[:, ::-1]).convert("L").save(folder / "zz_gray.JPEG", format="JPEG")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo21k")
  paths = synthetic_imagenet.make_demo(root, train_per_class=10, val_per_class=2, images_per_class=3, image_size=48)
  _corrupt_and_odd_files(root / "imagenet21k" / "n03609397")  # kazoo (unseen)
  for f in sorted((root / "ilsvrc" / "train" / "n02109047").iterdir())[3:]:  # great dane: only 3 images
    f.unlink()
  h, cs, g = build_hierarchy.build("imagenet_xml", paths["testsets"], paths["winter21"], xml=paths["xml"],
                                   p_list=paths["p_list"], names="xml")
  build_hierarchy.write(root / "hier", h, cs, g)
  make_splits.make(root / "hier", {k: paths[k] for k in ("ilsvrc_train", "ilsvrc_val", "imagenet21k")},
                   root / "index", seed=0)
  return imagenet21k.ImageIndex(root / "index"), h


def _train_iterator(index, batch_size, seed, split="train", classes="train", shuffled=False, **kwargs):
  """The HGR and CLIP-baseline trainers' data path (without HGR-Net's contrasts)."""
  rows = index.rows(split, classes)
  if shuffled:
    sampler = sampling.ShuffledSampler(rows, batch_size, seed)
  else:
    sampler = batchers.ClassPureSampler(index.labels(rows), rows, batch_size, seed)
  return sampling.iterator(sampler, imagenet21k.LoadImage(index, S, "clip"), per_row=True, **kwargs)


def _digest(x):
  return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


def test_eval_yields_every_valid_image_once_and_counts_3_skipped(demo, caplog):
  index, _ = demo
  rows = index.rows("test", "rest")
  expected = {}
  for r in rows:
    try:
      img, _ = imagenet21k.images.decode_rgb(index.path(r))
    except imagenet21k.images.CorruptImageError:
      continue
    expected[_digest(transforms.clip_pixels(img, S))] = index.label(r)  # uint8, as the loader sends
  assert len(expected) == len(rows) - 3 == 21 * 3 + 3
  got, skipped, batches = [], 0, 0
  for p in range(2):  # Two simulated hosts, global batch 16 -> 8 per host.
    ds, n = imagenet21k.eval_dataset(index, "test", "rest", 16, image_size=S, process_index=p, process_count=2)
    assert n == len(rows)
    for b in ds:
      batches += 1
      assert b["image"].shape == (8, S, S, 3) and b["image"].dtype == np.uint8 and b["label"].dtype == np.int32
      skipped += int(b["_skipped"].sum())
      got += [(_digest(x), int(label)) for x, label, m in zip(b["image"], b["label"], b["_mask"]) if m]
  assert skipped == 3
  assert len(got) == len(set(d for d, _ in got)) == len(expected)
  assert dict(got) == expected
  logged = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
  assert len({m.split(":")[0] for m in logged}) == 3


def test_class_pure_batches_one_class_each_uniform_visits_and_padding(demo):
  index, h = demo
  it = _train_iterator(index, 8, seed=3, num_threads=2)
  counts = {}
  for b in (next(it) for _ in range(36)):
    labels = set(b["label"][b["_mask"]].tolist())
    assert len(labels) == 1
    (c,) = labels
    counts[c] = counts.get(c, 0) + 1
    n_valid = int(b["_mask"].sum())
    assert n_valid == (3 if h.wnids[c] == "n02109047" else 8 if counts[c] % 2 else 2)  # 10 images = 8 + 2
    assert not b["image"][~b["_mask"]].any()  # padding is zeros
  assert sorted(counts) == sorted(h.indices(index.class_list("train")).tolist())
  assert set(counts.values()) == {2}  # 18 classes x 2 cycles: every class twice
  assert batchers.steps_per_epoch(index.labels(index.rows("train", "train")), 8) == 17 * 2 + 1
  train_labels = index.labels(index.rows("train", "train"))
  assert batchers.steps_per_epoch(train_labels, 8, "shuffled") == (17 * 10 + 3) // 8


def test_class_pure_hosts_share_the_class_and_split_its_images(demo):
  index, _ = demo
  rows = index.rows("train", "train")
  labels = index.labels(rows)
  sampler = batchers.ClassPureSampler(labels, rows, 8, 5)
  for step in range(40):
    got = [sampling.host_slice(sampler(step), p, 2) for p in range(2)]
    assert all(g.shape == (4,) for g in got)
    real = [r for g in got for r in g.tolist() if r >= 0]
    assert len(real) == len(set(real)) == len(sampler.step_rows(step))
    assert set(index.labels(np.array(real)).tolist()) == {sampler.step_label(step)}
    both = np.concatenate(got)
    assert (both[:len(real)] >= 0).all() and (both[len(real):] == sampling.PADDING).all()  # padding at the end
  # A class's consecutive visits walk through its images before repeating any.
  c0 = sampler.step_class(0)[0]
  visits = [s for s in range(40) if sampler.step_class(s)[0] == c0][:2]
  both = np.concatenate([sampler.step_rows(s) for s in visits])
  assert len(set(both.tolist())) == len(both) == min(len(sampler.class_rows[c0]), 16)


def test_shuffled_stream_covers_each_epoch_and_hosts_split_it(demo):
  index, _ = demo
  rows = index.rows("train", "train")
  n = len(rows)  # 173: epochs end inside a batch of 8
  sampler = sampling.ShuffledSampler(rows, 8, 1)
  stream = np.concatenate([sampler(s) for s in range(2 * n // 8 + 1)])
  epoch0, epoch1 = stream[:n], stream[n:2 * n]
  assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == sorted(rows.tolist())
  assert not np.array_equal(epoch0, epoch1)
  it = _train_iterator(index, 8, seed=1, shuffled=True, num_threads=1, process_index=1, process_count=2)
  b = next(it)
  assert b["image"].shape == (4, S, S, 3) and b["_mask"].all()
  np.testing.assert_array_equal(b["label"], index.labels(stream[4:8]))


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_iterator_continues_exactly(demo, workers):
  index, _ = demo
  make = lambda: _train_iterator(index, 8, seed=7, num_threads=2, num_workers=workers)
  it = make()
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = make()
  it2.set_state(state)
  got = [next(it2) for _ in range(3)]
  for a, b in zip(want, got):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert any(not np.array_equal(first[0]["label"], w["label"]) for w in want)
  # The same seed replays from the start; grain's checkpoint helper can store the iterator.
  assert isinstance(it, grain.DatasetIterator)
  np.testing.assert_array_equal(next(make())["image"], first[0]["image"])


def test_demo_prepare_is_fast_and_complete(tmp_path):
  import time  # pylint: disable=import-outside-toplevel
  t = time.time()
  paths = synthetic_imagenet.prepare_demo(tmp_path / "d")
  assert time.time() - t < 20
  ix = imagenet21k.ImageIndex(paths["index"])
  assert ix.meta["counts"]["train"]["seen_classes"] == 18 and ix.meta["counts"]["test"]["unseen_classes"] == 21
  assert synthetic_imagenet.prepare_demo(tmp_path / "d") == paths  # reused
  shutil.rmtree(tmp_path / "d")


def test_array_record_packs_read_back_through_grain(demo, tmp_path):
  from zsl_jax.projects.hgr.data import array_record  # pylint: disable=import-outside-toplevel
  index, _ = demo
  rows = index.rows("test", "rest")
  assert array_record.pack(index, [("test", "rest")], tmp_path / "rec", records_per_shard=16) == len(rows)
  packed = array_record.PackedIndex(index.directory, tmp_path / "rec")
  packed.check([("test", "rest")])
  assert len(list((tmp_path / "rec" / "pack-000").glob("shard-*.array_record"))) == -(-len(rows) // 16)
  from_files, _ = imagenet21k.eval_dataset(index, "test", "rest", 8, image_size=S)
  from_records, n = imagenet21k.eval_dataset(packed, "test", "rest", 8, image_size=S)
  assert n == len(rows) and len(from_files) == len(from_records)
  skipped = 0
  for a, b in zip(from_files, from_records):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
    skipped += int(b["_skipped"].sum())
  assert skipped == 3
  assert all(isinstance(packed.read(r)[0], bytes) for r in rows)
  it = _train_iterator(packed, 4, seed=0, split="test", classes="hop2", num_threads=1)
  b = next(it)
  assert len(set(b["label"][b["_mask"]].tolist())) == 1


def test_iterator_state_round_trips_through_orbax(demo, tmp_path):
  """The engine's path: grain.checkpoint.CheckpointSave inside an Orbax CheckpointManager."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  index, _ = demo
  make = lambda: _train_iterator(index, 8, seed=2, shuffled=True, num_threads=1)
  it = make()
  for _ in range(4):
    next(it)
  mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
  mngr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  want = next(it)
  it2 = make()
  mngr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
  got = next(it2)
  for k in want:
    np.testing.assert_array_equal(want[k], got[k])


def test_reference_loader_emulation_repeats_the_first_chunk():
  labels = np.repeat([7, 3, 5], [1100, 300, 512 * 14])
  rows = np.arange(len(labels))
  got = imagenet21k.reference_loader_rows(rows, labels)
  # Class 7: 3 batches, all its first 512 images; class 3: one batch; class 5: 14 batches (2 chunks).
  want = [np.tile(np.arange(512), 3), np.arange(1100, 1400),
          np.concatenate([np.tile(np.arange(1400, 1912), 12), np.tile(np.arange(1912, 2424), 2)])]
  np.testing.assert_array_equal(got, np.concatenate(want))


@pytest.mark.torch
def test_load_image_matches_torchvision_clip_transform(demo):
  """The decode + preprocess step gives the reference's (torchvision) CLIP input pixels."""
  from zsl_jax.models.torch_io import import_torchvision  # pylint: disable=import-outside-toplevel
  tv = import_torchvision()
  index, _ = demo
  tf = tv.transforms.Compose([
      tv.transforms.Resize(224, interpolation=tv.transforms.InterpolationMode.BICUBIC),
      tv.transforms.CenterCrop(224), tv.transforms.ToTensor(),
      tv.transforms.Normalize(transforms.CLIP_MEAN, transforms.CLIP_STD)])
  load = imagenet21k.LoadImage(index, 224, "clip")
  rows = index.rows("test", ["n03609397"])  # includes the CMYK, PNG and greyscale files
  checked = 0
  for r in rows:
    out = load.map({"row": r})
    if not out["_mask"]:
      continue
    want = tf(Image.open(index.path(r)).convert("RGB")).numpy().transpose(1, 2, 0)
    assert out["image"].dtype == np.uint8  # normalised on device, as CLIP.encode_image does
    np.testing.assert_allclose(jax.jit(transforms.normalize_on_device)(out["image"]), want, atol=1e-5)
    checked += 1
  assert checked == 6
