"""`config.data` -> `ZSLDataset`: the generated demo, a dataset folder, or explicitly named files."""
import functools
import os
import pathlib

from zsl_jax.data import demo_cache
from zsl_jax.errors import UserError
from zsl_jax.projects.attr.config import DEMO
from zsl_jax.projects.attr.data import dataset
from zsl_jax.projects.attr.data import demo as synthetic_zsl
from zsl_jax.projects.attr.data import feature_store
from zsl_jax.projects.attr.data import xlsa17


def demo_files(data):
  """The demo benchmark's file paths, generated on first use into a folder keyed by its parameters.

  Multi-host runs build it on process 0 while the others wait (`demo_cache.main_process_first`).
  """
  name = xlsa17.check_dataset_name(data.dataset)
  sizes = {**DEMO, "num_classes": data.get("demo_classes", DEMO["num_classes"]),
           "num_unseen": data.get("demo_unseen", DEMO["num_unseen"]),
           "num_val_classes": data.get("demo_val_classes", DEMO["num_val_classes"]),
           "num_attributes": data.get("demo_attributes", DEMO["num_attributes"])}
  kwargs = dict(sizes, dataset=name, seed=data.demo_seed, noise=data.get("demo_noise", 0.1))
  params = demo_cache.arguments(synthetic_zsl.make_demo, **kwargs)

  def build(work, final):
    del final  # The demo files never name their own folder.
    synthetic_zsl.make_demo(work, **kwargs)

  parent = pathlib.Path(os.path.expanduser(data.demo_dir))
  folder = demo_cache.main_process_first(
      functools.partial(demo_cache.build_once, parent, name, params, build, version=synthetic_zsl.VERSION),
      "zsl_jax attr demo data")
  return {"hdf5": str(folder / f"feature_map_ResNet_101_{name}.hdf5"), "att_splits": str(folder / "att_splits.mat")}


def converted_features(data, hdf5):
  """config.data.features_npy, else the converted `<hdf5 stem>.npy` beside the hdf5 when one exists, else None."""
  if data.get("features_npy"):
    path = os.path.expanduser(data.features_npy)
    if not os.path.isfile(path):
      raise UserError(f"config.data.features_npy={path} not found; run python -m zsl_jax.tools.convert_features "
                      f"--hdf5 {hdf5}")
    return path
  beside = os.path.splitext(hdf5)[0] + ".npy"
  return beside if not data.demo and os.path.isfile(beside) else None


def load_dataset(config):
  """ZSLDataset from config.data (demo, root folder or explicit files)."""
  d = config.data
  name = xlsa17.check_dataset_name(d.dataset)
  files = {"hdf5": d.hdf5, "att_splits": d.att_splits, "res101": d.res101, "w2v": d.w2v}
  if d.demo:
    files.update(demo_files(d))
  elif d.root:
    root = pathlib.Path(os.path.expanduser(d.root))
    if not files["hdf5"]:
      files["hdf5"] = str(root / f"feature_map_ResNet_101_{name}.hdf5")
    if not files["att_splits"] and (root / "att_splits.mat").exists():
      files["att_splits"] = str(root / "att_splits.mat")
  if not files["hdf5"]:
    raise UserError(f"no region features for {name}: pass --config.data.root=<folder with feature_map_ResNet_101_"
                    f"{name}.hdf5> or --config.data.hdf5=<file>, or use the :demo config")
  ds = dataset.load_zsl_dataset(name, **{k: (v or None) for k, v in files.items()}, in_memory=d.in_memory,
                                val_seed=d.val_seed, memory_budget=d.get("memory_budget", feature_store.MEMORY_BUDGET),
                                features_npy=converted_features(d, files["hdf5"]))
  if ds.w2v is None:
    raise UserError(f"{name}: no attribute word vectors; pass --config.data.w2v=<{name}_attribute.pkl>")
  return ds
