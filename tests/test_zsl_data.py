"""xlsa17 / DAZLE readers, ZSLDataset, grain feature source and the demo generator."""
import pickle

import grain
import h5py
import numpy as np
import pytest
import scipy.io

from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import dataset as zsl_dataset
from zsl_jax.projects.attr.data import demo as synthetic_zsl
from zsl_jax.projects.attr.data import validation
from zsl_jax.projects.attr.data import xlsa17

# Shapes and split sizes of the real xlsa17 files (and DAZLE's 300-d word vectors).
REAL = {"AWA2": (50, 85, 23527, 5882, 7913, 300), "CUB": (200, 312, 7057, 1764, 2967, 300),
        "SUN": (717, 102, 10320, 2580, 1440, 300)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return synthetic_zsl.make_demo(tmp_path_factory.mktemp("demo"), "AWA2", seed=3)


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_att_splits_and_pickles(shared_data, name):
  k, i, n_tv, n_ts, n_tu, d = REAL[name]
  ds = zsl_dataset.load_zsl_dataset(name, att_splits=shared_data / "xlsa17" / name / "att_splits.mat",
                           w2v=shared_data / "dazle_w2v" / f"{name}_attribute.pkl",
                           attribute_names=shared_data / "dazle_w2v" / f"{name}_new_des.csv")
  assert ds.att.shape == (k, i) and ds.original_att.shape == (k, i) and ds.att.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(ds.att, axis=1), 1.0, atol=1e-5)
  assert (ds.trainval.size, ds.test_seen.size, ds.test_unseen.size) == (n_tv, n_ts, n_tu)
  assert len(ds.class_names) == k and len(ds.attribute_names) == i
  assert ds.w2v.shape == (i, d)
  # 0-based, disjoint splits; per-image fields are absent without res101.mat.
  assert min(ds.trainval.min(), ds.test_seen.min(), ds.test_unseen.min()) == 0
  assert not np.intersect1d(ds.trainval, ds.test_seen).size and not np.intersect1d(ds.trainval, ds.test_unseen).size
  assert ds.labels is None and ds.features is None
  with pytest.raises(UserError, match="per-image labels"):
    ds.split("train")


def test_awa2_negative_attributes_clipped_on_request(shared_data):
  path = shared_data / "xlsa17" / "AWA2" / "att_splits.mat"
  raw = zsl_dataset.load_zsl_dataset("AWA2", att_splits=path)
  clipped = zsl_dataset.load_zsl_dataset("AWA2", att_splits=path, clip_negative_att=True)
  assert (raw.att < 0).sum() == 4 and (clipped.att < 0).sum() == 0
  np.testing.assert_allclose(np.linalg.norm(clipped.att, axis=1), 1.0, atol=1e-6)


def test_real_names_and_pickle_details(shared_data):
  raw = pickle.load(open(shared_data / "dazle_w2v" / "SUN_attribute.pkl", "rb"))
  assert raw.dtype == np.float64 and raw.shape == (102, 300)
  assert np.flatnonzero(~raw.any(1)).tolist() == [88]  # "man-made", documented defect
  names = xlsa17.load_att_splits(shared_data / "xlsa17" / "AWA2" / "att_splits.mat")["class_names"]
  assert names[:2] == ["antelope", "grizzly+bear"]
  cub = xlsa17.load_att_splits(shared_data / "xlsa17" / "CUB" / "att_splits.mat")
  assert cub["train_loc"] is None and cub["val_loc"] is None  # this CUB copy lacks them (issue #1)


def test_real_train_val_loc_overlap_test_seen(shared_data):
  """Why validation_split intersects train_loc/val_loc with trainval: they include test_seen images."""
  s = xlsa17.load_att_splits(shared_data / "xlsa17" / "AWA2" / "att_splits.mat")
  assert np.intersect1d(s["train_loc"], s["test_seen_loc"]).size == 4031
  assert np.intersect1d(s["val_loc"], s["test_seen_loc"]).size == 1851
  labels = np.zeros(37322, np.int64)  # Class-level check only needs a consistent labelling.
  labels[s["val_loc"]] = 1
  val = validation.validation_split(s["trainval_loc"], labels, train_loc=s["train_loc"], val_loc=s["val_loc"])
  assert val["val_unseen"].size == 7340 and val["train"].size + val["val_seen"].size == 16187
  for part in ("train", "val_seen", "val_unseen"):
    assert not np.intersect1d(val[part], s["test_seen_loc"]).size


def _write_res101(path, labels_1based, files):
  cell = np.empty((len(files), 1), dtype=object)
  for i, f in enumerate(files):
    cell[i, 0] = f
  scipy.io.savemat(path, {"features": np.zeros((2048, len(files))),
                          "labels": np.asarray(labels_1based, np.uint8).reshape(-1, 1), "image_files": cell})


def test_res101_real_format(tmp_path, demo):
  """A res101.mat written as MATLAB does (cells, 1-based uint8 labels) gives 0-based labels and classes."""
  labels0 = xlsa17.load_res101(demo["res101"])["labels"]
  files = [f"/BS/xian/work/data/Animals_with_Attributes2//JPEGImages/c/{i}.jpg" for i in range(labels0.size)]
  _write_res101(tmp_path / "res101.mat", labels0 + 1, files)
  res = xlsa17.load_res101(tmp_path / "res101.mat")
  assert res["labels"].dtype == np.int64 and np.array_equal(res["labels"], labels0) and res["image_files"] == files
  ds = zsl_dataset.load_zsl_dataset("awa2", att_splits=demo["att_splits"], res101=tmp_path / "res101.mat")
  assert ds.name == "AWA2" and ds.features is None
  assert ds.seen_classes.size == 15 and ds.unseen_classes.size == 5
  assert not np.intersect1d(ds.seen_classes, ds.unseen_classes).size
  assert np.array_equal(np.unique(ds.labels[ds.test_seen]), ds.seen_classes)


def test_hdf5_alone_equals_mat_files(demo):
  a = zsl_dataset.load_zsl_dataset("AWA2", hdf5=demo["hdf5"])
  b = zsl_dataset.load_zsl_dataset("AWA2", att_splits=demo["att_splits"], res101=demo["res101"], hdf5=demo["hdf5"],
                          w2v=demo["w2v"], attribute_names=demo["attribute_names"])
  for key in ("att", "original_att", "w2v", "labels", "trainval", "test_seen", "test_unseen", "seen_classes",
              "unseen_classes", "train", "val_seen", "val_unseen", "val_classes"):
    np.testing.assert_allclose(getattr(a, key), getattr(b, key), atol=1e-6, err_msg=key)
  assert a.class_names == b.class_names and a.attribute_names == b.attribute_names
  assert a.labels.dtype == np.int32 and a.w2v.dtype == np.float32


def test_validation_split_from_locs(demo):
  ds = zsl_dataset.load_zsl_dataset("AWA2", hdf5=demo["hdf5"])
  assert ds.split_source == "xlsa17 train_loc/val_loc" and ds.val_classes.size == 3
  parts = [ds.train, ds.val_seen, ds.val_unseen]
  assert sum(p.size for p in parts) == ds.trainval.size
  assert np.array_equal(np.sort(np.concatenate(parts)), ds.trainval)
  # val_unseen classes are pseudo-unseen: absent from train and val_seen.
  assert np.array_equal(np.unique(ds.labels[ds.val_unseen]), ds.val_classes)
  assert not np.isin(ds.labels[np.concatenate([ds.train, ds.val_seen])], ds.val_classes).any()
  assert np.array_equal(np.unique(ds.labels[ds.val_seen]), np.unique(ds.labels[ds.train]))


def test_validation_split_seeded_without_locs():
  labels = np.repeat(np.arange(30), 10)
  trainval = np.arange(300)
  a = validation.validation_split(trainval, labels, dataset="CUB", seed=1)
  b = validation.validation_split(trainval, labels, dataset="CUB", seed=1)
  c = validation.validation_split(trainval, labels, dataset="CUB", seed=2)
  assert a["source"].startswith("seeded") and a["val_classes"].size == 6  # 0.2 of 30 (PS count 50 does not fit)
  assert all(np.array_equal(a[k], b[k]) for k in ("train", "val_seen", "val_unseen"))
  assert not np.array_equal(a["val_classes"], c["val_classes"])
  assert a["val_seen"].size == 24 * 2 and a["train"].size == 24 * 8 and a["val_unseen"].size == 60
  assert not np.isin(labels[a["train"]], a["val_classes"]).any()


def test_feature_source_layout_and_modes(demo):
  ds = zsl_dataset.load_zsl_dataset("AWA2", hdf5=demo["hdf5"])
  with h5py.File(demo["hdf5"]) as f:
    raw = f["feature_map"][()]  # [N, F, 7, 7]
  ex = ds.features[17]
  assert ex["features"].shape == (49, 64) and ex["features"].dtype == np.float32
  np.testing.assert_array_equal(ex["features"], raw[17].reshape(64, 49).T)
  assert ex["label"] == ds.labels[17] and ex["index"] == 17
  idx = np.array([40, 3, 3, 200])
  np.testing.assert_array_equal(ds.features.get_batch(idx), raw[idx].reshape(4, 64, 49).transpose(0, 2, 1))
  mem = zsl_dataset.load_zsl_dataset("AWA2", hdf5=demo["hdf5"], in_memory=True)
  np.testing.assert_array_equal(mem.features.get_batch(idx), ds.features.get_batch(idx))
  norm = zsl_dataset.load_zsl_dataset("AWA2", hdf5=demo["hdf5"], normalize_features=True)
  unit = raw[idx].reshape(4, 64, 49).transpose(0, 2, 1)
  unit = unit / np.linalg.norm(unit, axis=-1, keepdims=True)
  np.testing.assert_allclose(norm.features.get_batch(idx), unit, rtol=1e-6)
  np.testing.assert_allclose(norm.features[40]["features"], unit[0], rtol=1e-6)
  sub = ds.source("test_unseen")
  assert len(sub) == ds.test_unseen.size and sub[0]["index"] == ds.test_unseen[0]
  assert isinstance(ds.features, grain.sources.RandomAccessDataSource)
  assert isinstance(sub, grain.sources.RandomAccessDataSource)
  first = grain.MapDataset.source(sub).batch(8)[0]
  assert first["features"].shape == (8, 49, 64) and first["label"].dtype == np.int32


def test_feature_source_in_grain_workers(demo):
  """The lazily opened h5py handle survives pickling into grain worker processes."""
  ds = zsl_dataset.load_zsl_dataset("AWA2", hdf5=demo["hdf5"])
  src = ds.source("trainval")
  ds.features[0]  # Opens the file in this process first: a worker must not inherit the handle.
  loader = grain.DataLoader(data_source=src, sampler=grain.samplers.IndexSampler(
      len(src), shard_options=grain.sharding.NoSharding(), shuffle=False, num_epochs=1),
                            operations=[grain.transforms.Batch(16)], worker_count=2)
  batches = list(loader)
  got = np.concatenate([b["index"] for b in batches])  # Workers interleave their batches.
  assert np.array_equal(np.sort(got), ds.trainval)
  for b in batches[:3]:
    np.testing.assert_array_equal(b["features"], ds.features.get_batch(b["index"]))
    np.testing.assert_array_equal(b["label"], ds.labels[b["index"]])


def test_demo_features_carry_attribute_signal(demo):
  """Ridge regression from pooled features to attributes recognises unseen classes far above chance."""
  ds = zsl_dataset.load_zsl_dataset("AWA2", hdf5=demo["hdf5"], in_memory=True)
  x = ds.features.get_batch(np.arange(ds.labels.size)).max(1)  # [N, F] max over regions
  xt, yt = x[ds.trainval], ds.att[ds.labels[ds.trainval]]
  w = np.linalg.solve(xt.T @ xt + 1.0 * np.eye(x.shape[1]), xt.T @ yt)
  pred = x[ds.test_unseen] @ w
  unseen_att = ds.att[ds.unseen_classes]
  guess = ds.unseen_classes[np.argmax(pred @ unseen_att.T, axis=1)]
  acc = np.mean(guess == ds.labels[ds.test_unseen])
  assert acc > 0.7, acc  # chance is 0.2


def test_demo_uses_real_names_when_given(tmp_path, shared_data):
  paths = synthetic_zsl.make_demo(tmp_path, "CUB", num_attributes=10, feature_dim=16, images_per_class=6,
                                  word_vector_dir=shared_data / "dazle_w2v")
  ds = zsl_dataset.load_zsl_dataset("CUB", hdf5=paths["hdf5"])
  real = pickle.load(open(shared_data / "dazle_w2v" / "CUB_attribute.pkl", "rb"))
  rows = [np.flatnonzero(np.all(np.isclose(real, v, atol=1e-6), axis=1)) for v in ds.w2v.astype(np.float64)]
  assert all(r.size == 1 for r in rows) and ds.w2v.shape == (10, 300)
  assert ds.features.feature_dim == 16 and ds.attribute_names[0].count(" ") >= 1


def test_bad_inputs(tmp_path, demo):
  with pytest.raises(UserError, match="unknown dataset 'ImageNet'"):
    zsl_dataset.load_zsl_dataset("ImageNet", hdf5=demo["hdf5"])
  scipy.io.savemat(tmp_path / "bad.mat", {"att": np.eye(3)})
  with pytest.raises(UserError, match="lacks original_att, allclasses_names, trainval_loc"):
    xlsa17.load_att_splits(tmp_path / "bad.mat")
  with pytest.raises(UserError, match="lacks labels, image_files"):
    xlsa17.load_res101(tmp_path / "bad.mat")
  with pytest.raises(UserError, match=r"shape \(5, 300\) but the attribute matrix has 24 attributes"):
    zsl_dataset.load_zsl_dataset("AWA2", hdf5=demo["hdf5"], w2v=np.zeros((5, 300)))
  with pytest.raises(UserError, match="not found"):
    zsl_dataset.load_zsl_dataset("AWA2", att_splits=tmp_path / "absent.mat")
  with h5py.File(tmp_path / "partial.hdf5", "w") as f:
    f["feature_map"] = np.zeros((2, 4, 7, 7), np.float32)
  with pytest.raises(UserError, match="lacks labels"):
    zsl_dataset.load_zsl_dataset("AWA2", hdf5=tmp_path / "partial.hdf5")
  with pytest.raises(UserError, match="disagree on the image labels"):
    labels = xlsa17.load_res101(demo["res101"])["labels"]
    _write_res101(tmp_path / "r.mat", (labels + 1) % 20 + 1, ["/a/b"] * labels.size)
    zsl_dataset.load_zsl_dataset("AWA2", res101=tmp_path / "r.mat", hdf5=demo["hdf5"])
