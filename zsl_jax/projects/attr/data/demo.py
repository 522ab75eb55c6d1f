"""Small AWA2/CUB/SUN-format demo data whose region features carry real attribute signal.

The `:demo` configs of DAZLE/VSMR must learn something real in about a minute on a CPU without
the benchmarks' images or 15 GB feature files. `make_demo` writes the same files a user brings
(an xlsa17-like `att_splits.mat` + `res101.mat`, a DAZLE-layout hdf5, a DAZLE-style word-vector
pickle and names csv), so the demo exercises the real readers. Each class has a set of present
attributes; each present attribute is drawn as its own non-negative prototype pattern in one or two
random regions of the 7x7 grid, over background noise. Attention over regions can therefore find
attributes, and unseen classes are recognisable from their attribute vectors alone.

`make_demo_images` writes a tiny image set in a dataset's folder layout with a matching
`res101.mat`/`att_splits.mat`, for trying `zsl_jax.tools.extract_features` end to end.
"""
import csv
import os

import h5py
import numpy as np
from PIL import Image
import scipy.io

from zsl_jax import cli
from zsl_jax import paths as paths_lib
from zsl_jax.data.images import encode_jpeg
from zsl_jax.errors import UserError
from zsl_jax.projects.attr.data import word_vectors
from zsl_jax.projects.attr.data.xlsa17 import check_dataset_name

# Bump when `make_demo` writes different data for the same arguments: cached demo folders are keyed
# by it (zsl_jax.data.demo_cache), so every run then builds the new data instead of reusing the old.
VERSION = 1

# Stored-path prefixes of res101.mat `image_files` (the xlsa17 authors' machine) and the image folder
# below the dataset root in the users' layout.
_PREFIX = {"AWA2": "/BS/xian/work/data/Animals_with_Attributes2//JPEGImages",
           "CUB": "/BS/Deep_Fragments/work/MSc/CUB_200_2011/CUB_200_2011/images",
           "SUN": "/BS/Deep_Fragments/work/MSc/data/SUN/images"}


def _cell(strings):
  out = np.empty((len(strings), 1), dtype=object)
  for i, s in enumerate(strings):
    out[i, 0] = s
  return out


def _col(indices):
  """0-based indices -> 1-based MATLAB column (uint16 as in xlsa17 when it fits)."""
  v = np.asarray(indices, np.int64) + 1
  return v.astype(np.uint16 if v.size == 0 or v.max() < 65536 else np.int64).reshape(-1, 1)


def _class_attributes(rng, num_classes, num_attributes, density):
  """Binary [K, I] with distinct rows, every attribute used by some class and absent from another."""
  while True:
    present = rng.random((num_classes, num_attributes)) < density
    if (len({r.tobytes() for r in present}) == num_classes and present.any(0).all() and
        (~present).any(0).all() and present.sum(1).min() >= 2):
      return present


def _splits(rng, labels, seen, unseen, val_classes, test_seen_fraction):
  """xlsa17-style 0-based locs; train_loc/val_loc cover all seen images, test_seen included."""
  trainval, test_seen = [], []
  for c in seen:
    rows = np.flatnonzero(labels == c)
    rows = rows[rng.permutation(rows.size)]
    n = max(1, int(round(test_seen_fraction * rows.size)))
    test_seen.append(rows[:n])
    trainval.append(rows[n:])
  seen_rows = np.flatnonzero(np.isin(labels, seen))
  is_val = np.isin(labels[seen_rows], val_classes)
  return {"trainval_loc": np.sort(np.concatenate(trainval)), "test_seen_loc": np.sort(np.concatenate(test_seen)),
          "test_unseen_loc": np.flatnonzero(np.isin(labels, unseen)),
          "train_loc": seen_rows[~is_val], "val_loc": seen_rows[is_val]}


def _write_att_splits(path, att_binary_strength, class_names, locs):
  original = att_binary_strength.T  # [I, K]
  att = original / np.maximum(np.linalg.norm(original, axis=0, keepdims=True), 1e-12)
  mat = {"att": att, "original_att": original, "allclasses_names": _cell(class_names)}
  mat.update({k: _col(v) for k, v in locs.items()})
  scipy.io.savemat(path, mat)


def _write_res101(path, labels, image_files, pooled):
  labels = np.asarray(labels) + 1  # MATLAB 1-based, uint8/uint16 as in the xlsa17 files
  labels = labels.reshape(-1, 1).astype(np.uint8 if labels.max() < 256 else np.uint16)
  scipy.io.savemat(path, {"features": pooled, "labels": labels, "image_files": _cell(image_files)})


def _demo_names(rng, dataset, num_attributes, word_vector_dir, w2v_dim):
  """Real attribute names and vectors (a random subset) when DAZLE's files are at hand, else random."""
  if word_vector_dir is not None:
    pkl = os.path.join(word_vector_dir, f"{dataset}_attribute.pkl")
    names_csv = os.path.join(word_vector_dir, f"{dataset}_new_des.csv")
    if os.path.isfile(pkl) and os.path.isfile(names_csv):
      vectors = word_vectors.load_vector_array(pkl)
      names = word_vectors.read_attribute_names(names_csv, dataset)
      usable = np.flatnonzero(np.linalg.norm(vectors, axis=1) > 0)
      pick = np.sort(rng.choice(usable, min(num_attributes, usable.size), replace=False))
      return [names[i] for i in pick], vectors[pick]
  names = [f"attribute {i:02d}" for i in range(num_attributes)]
  return names, rng.standard_normal((num_attributes, w2v_dim))


def make_demo(out_dir, dataset="AWA2", *, num_classes=20, num_unseen=5, num_val_classes=3, num_attributes=24,
              feature_dim=64, grid=7, images_per_class=30, test_seen_fraction=0.2, attribute_density=0.3,
              noise=0.1, w2v_dim=300, word_vector_dir=None, seed=0):
  """Writes a demo benchmark in the real file formats; returns a dict of the written paths.

  Files: `att_splits.mat`, `res101.mat` (labels, image_files, pooled features), the DAZLE-layout
  `feature_map_ResNet_101_<DS>.hdf5` (feature_map [N, feature_dim, grid, grid] float32, gzip),
  `<DS>_attribute.pkl` (word vectors) and `<DS>_new_des.csv` (attribute names).

  The defaults (20 classes: 15 seen, 5 unseen; 24 attributes; 600 images of 49 x 64 features;
  ~0.3 s to build) are sized so that a ridge probe on max-pooled features already recognises
  unseen classes at 0.85-1.0 accuracy (chance 0.2) while the task still needs the attributes.

  Args:
    word_vector_dir: a folder with DAZLE's `<DS>_attribute.pkl` and `<DS>_new_des.csv`; when given,
      a random subset of the real attribute names and vectors is used, else random ones.
  """
  dataset = check_dataset_name(dataset)
  if not 0 < num_unseen < num_classes or not 0 < num_val_classes < num_classes - num_unseen:
    raise UserError(f"demo needs 0 < num_unseen ({num_unseen}) < num_classes ({num_classes}) and "
                    f"0 < num_val_classes ({num_val_classes}) < the number of seen classes")
  rng = np.random.default_rng(seed)
  os.makedirs(out_dir, exist_ok=True)
  names, w2v = _demo_names(rng, dataset, num_attributes, word_vector_dir, w2v_dim)
  present = _class_attributes(rng, num_classes, len(names), attribute_density)  # [K, I]
  strength = present * rng.uniform(50.0, 100.0, present.shape)  # original_att-like, 0..100
  labels = np.repeat(np.arange(num_classes), images_per_class)
  feats = _region_features(rng, labels, strength, feature_dim, grid * grid, noise)  # [N, R, F]
  unseen = np.sort(rng.choice(num_classes, num_unseen, replace=False))
  seen = np.setdiff1d(np.arange(num_classes), unseen)
  val_classes = np.sort(rng.choice(seen, num_val_classes, replace=False))
  locs = _splits(rng, labels, seen, unseen, val_classes, test_seen_fraction)
  class_names = [f"class_{c:02d}" for c in range(num_classes)]
  image_files = [f"{_PREFIX[dataset]}/{class_names[c]}/{class_names[c]}_{i:04d}.jpg" for i, c in enumerate(labels)]

  paths = {k: os.path.join(out_dir, v) for k, v in {
      "att_splits": "att_splits.mat", "res101": "res101.mat", "hdf5": f"feature_map_ResNet_101_{dataset}.hdf5",
      "w2v": f"{dataset}_attribute.pkl", "attribute_names": f"{dataset}_new_des.csv"}.items()}
  _write_att_splits(paths["att_splits"], strength, class_names, locs)
  _write_res101(paths["res101"], labels, image_files, feats.mean(1).T.astype(np.float64))
  word_vectors.save_vector_array(paths["w2v"], w2v)
  with open(paths["attribute_names"], "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["", "idx", "des", "new_des"])
    writer.writerows([i, i + 1, name, name] for i, name in enumerate(names))
  _write_hdf5(paths["hdf5"], feats, grid, labels, locs, strength, w2v, class_names, names)
  return paths


def _region_features(rng, labels, strength, feature_dim, regions, noise):
  """[N, R, F] float32: background noise plus each present attribute's prototype in 1-2 regions."""
  # Non-negative sparse prototype per attribute (ResNet features are post-ReLU).
  shape = (strength.shape[1], feature_dim)
  protos = np.abs(rng.standard_normal(shape)) * (rng.random(shape) < 0.3)
  protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-6)  # [I, F]
  feats = np.abs(noise * rng.standard_normal((labels.size, regions, feature_dim)))  # [N, R, F] background
  for i, c in enumerate(labels):
    for a in np.flatnonzero(strength[c]):
      where = rng.choice(regions, rng.integers(1, 3), replace=False)
      amp = strength[c, a] / 100.0 * rng.uniform(0.7, 1.3)
      feats[i, where] += amp * protos[a]
  return feats.astype(np.float32)


def _write_hdf5(path, feats, grid, labels, locs, strength, w2v, class_names, attribute_names):
  """The DAZLE-layout feature file: feature_map [N, F, grid, grid] plus labels, locs, att, w2v_att, names."""
  n, _, feature_dim = feats.shape
  att = strength / np.maximum(np.linalg.norm(strength, axis=1, keepdims=True), 1e-12)
  with h5py.File(path, "w") as f:
    f.create_dataset("feature_map", data=feats.transpose(0, 2, 1).reshape(n, feature_dim, grid, grid),
                     compression="gzip", chunks=(1, feature_dim, grid, grid))
    f.create_dataset("labels", data=labels.astype(np.int64), compression="gzip")
    for key, value in locs.items():
      f.create_dataset(key, data=value.astype(np.int64), compression="gzip")
    f.create_dataset("att", data=att, compression="gzip")
    f.create_dataset("original_att", data=strength, compression="gzip")
    f.create_dataset("w2v_att", data=np.asarray(w2v, np.float64), compression="gzip")
    f.create_dataset("class_names", data=np.array(class_names, dtype=h5py.string_dtype()))
    f.create_dataset("attribute_names", data=np.array(attribute_names, dtype=h5py.string_dtype()))


def make_demo_images(out_dir, dataset="AWA2", *, num_classes=4, num_unseen=1, images_per_class=3, num_attributes=6,
                     min_size=40, max_size=90, seed=0):
  """Writes JPEGs in the dataset's folder layout plus matching `res101.mat` and `att_splits.mat`.

  The image root to pass to the extractor is `<out_dir>/images`; stored paths follow the xlsa17
  prefixes, so DAZLE's prefix rule resolves them. Images differ in size and aspect ratio and
  include a greyscale one, as real data does. Returns a dict with `images`, `att_splits`,
  `res101`, `labels`, `files` (absolute image paths in res101 order).
  """
  dataset = check_dataset_name(dataset)
  rng = np.random.default_rng(seed)
  root = os.path.join(out_dir, "images")
  stored_root = _PREFIX[dataset]
  keep = {"AWA2": 3, "CUB": 3, "SUN": 1}[dataset]  # Components of the prefix that live under the root.
  local_prefix = "/".join(p for p in stored_root.split("/")[-keep:] if p)
  labels = np.repeat(np.arange(num_classes), images_per_class)
  class_names = [f"class_{c:02d}" for c in range(num_classes)]
  stored, files = [], []
  for i, c in enumerate(labels):
    rel = f"{class_names[c]}/{class_names[c]}_{i:04d}.jpg"
    stored.append(f"{stored_root}/{rel}")
    path = os.path.join(root, local_prefix, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = rng.integers(min_size, max_size, 2)
    pixels = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    pixels[: h // 2] = (np.array([60, 120, 180]) * (c + 1) % 255).astype(np.uint8)  # class tint
    if i == 1:
      Image.fromarray(pixels[..., 0]).save(path, format="JPEG")  # greyscale JPEG
    else:
      with open(path, "wb") as f:
        f.write(encode_jpeg(pixels))
    files.append(path)
  unseen = np.arange(num_classes - num_unseen, num_classes)
  seen = np.arange(num_classes - num_unseen)
  locs = _splits(rng, labels, seen, unseen, seen[:1], 0.34)
  present = _class_attributes(rng, num_classes, num_attributes, 0.5)
  os.makedirs(out_dir, exist_ok=True)
  out = {"images": root, "att_splits": os.path.join(out_dir, "att_splits.mat"),
         "res101": os.path.join(out_dir, "res101.mat"), "labels": labels, "files": files}
  _write_att_splits(out["att_splits"], present * rng.uniform(50, 100, present.shape), class_names, locs)
  _write_res101(out["res101"], labels, stored, np.zeros((2048, labels.size)))
  return out


def _run(args):
  paths_lib.check_writable_dir(args.out, "--out")
  if args.images:
    out = make_demo_images(args.out, args.dataset, seed=args.seed)
    out = {k: out[k] for k in ("images", "att_splits", "res101")}
  else:
    out = make_demo(args.out, args.dataset, feature_dim=args.feature_dim, word_vector_dir=args.word_vector_dir,
                    seed=args.seed)
  for key, path in out.items():
    print(f"{key}: {path}")


def main(argv=None):
  """`python -m zsl_jax.tools.zsl_demo --out DIR [--dataset AWA2] [--images]`: writes demo files."""
  p = cli.ArgumentParser("zsl_demo", description=__doc__)
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--dataset", default="AWA2", help="AWA2, CUB or SUN: file names and image-path layout")
  p.add_argument("--feature-dim", type=int, default=64, help="region feature size F (ResNet-101 has 2048)")
  p.add_argument("--word-vector-dir", default=None, help="folder with DAZLE's <DS>_attribute.pkl and "
                 "<DS>_new_des.csv, to use real attribute names and vectors")
  p.add_argument("--images", action="store_true", help="instead write a tiny JPEG set + res101.mat/att_splits.mat "
                 "for trying zsl_jax.tools.extract_features")
  p.add_argument("--seed", type=int, default=0, help="random seed")
  return cli.run_command("zsl_demo", _run, p.parse_args(argv))


if __name__ == "__main__":
  raise SystemExit(main())
