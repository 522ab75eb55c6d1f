r"""Overlay a trained DAZLE's (or VSMR's) top attribute attention maps on images, as PNG files.

From images, with the ResNet-101 that made the features (torchvision checkpoint, run in JAX):
  python -m zsl_jax.tools.attention_maps --run W --images a.jpg b.jpg \
      --weights resnet101-63fe2227.pth --out maps/
From rows of the run's feature file (no backbone needed), with the matching image files:
  python -m zsl_jax.tools.attention_maps --run W --rows 17 4031 --images a.jpg b.jpg --out maps/

Each PNG shows the 224x224 centre crop the features were computed from, the predicted class (over
all classes, with the calibration margin) and the true one when known, and for the top attributes
their 7x7 attention map (softmax over regions) upsampled onto the crop, titled with the attribute
name, its attention weight β and its contribution β·e·z to the predicted class's score (the
ranking used, `--rank beta` ranks by β). W is a training workdir: its config.json names the data.
"""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from zsl_jax import cli
from zsl_jax import engine
from zsl_jax import paths
from zsl_jax.data.images import decode_rgb
from zsl_jax.data.transforms import center_crop
from zsl_jax.data.transforms import imagenet_preprocess
from zsl_jax.data.transforms import resize_shorter
from zsl_jax.errors import UserError
from zsl_jax.models import resnet
from zsl_jax.models import resnet_convert


def load_run(run, step=-1):
  """(trainer, variables) of a training workdir (its config.json and checkpoints)."""
  path = pathlib.Path(run) / "config.json"
  if not path.exists():
    raise UserError(f"{run} has no config.json; pass --run=<a zsl_jax training workdir>")
  try:
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise UserError(f"{path} is not readable JSON ({e}); pass --run=<a zsl_jax training workdir>") from None
  if config.trainer not in ("dazle", "vsmr"):
    raise UserError(f"{run} trained {config.trainer!r}; attention maps exist for dazle and vsmr runs")
  config.mesh.data, config.mesh.fsdp = -1, 1
  eng = engine.Engine(config, run)
  state, _ = eng.restore_for_eval(str(run), step)
  return eng.trainer, {"params": state["params"], **state["model_state"]}


def image_features(images, weights, resolution=224):
  """Region features [N, R, 2048] and the preprocessed crops, through the JAX ResNet."""
  stages, variables = resnet_convert.load_torchvision_checkpoint(weights)
  model = resnet.ResNet(stage_sizes=stages, features_only=True)
  x = np.stack([imagenet_preprocess(decode_rgb(p)[0], resolution, resolution) for p in images])
  fmap = jax.jit(model.apply)(variables, x)  # [N, h, w, 2048]
  n, h, w, f = fmap.shape
  return np.asarray(fmap, np.float32).reshape(n, h * w, f)


def display_crop(path, resolution=224):
  """The resized + centre-cropped RGB image the features see (uint8 [S, S, 3])."""
  img = center_crop(resize_shorter(decode_rgb(path)[0], resolution), resolution)
  return np.asarray(img, np.uint8)


def explain(trainer, variables, feats):
  """Per image: predicted class, attention [I, R], β [I] and the per-attribute ranking score."""
  uni = trainer.universe("test")
  classes = uni["classes"]
  if trainer.config.trainer == "dazle":
    att, margin = trainer.class_inputs(uni)
    out = trainer.model.apply(variables, jnp.asarray(feats), att, margin)
    pred = classes[np.argmax(np.asarray(out["scores"]), 1)]
    contrib = np.asarray(out["attribute_attention"] * out["attribute_scores"]) * trainer.att[pred]  # [N, I]
    return pred, np.asarray(out["attention"]), np.asarray(out["attribute_attention"]), contrib
  model = trainer.model
  mask = model.apply(variables, jnp.asarray(feats), method=model.attribute_logits) > 0
  out = model.apply(variables, jnp.asarray(feats), mask, method=model.embed)
  beta = np.asarray(out["attribute_attention"])
  return None, np.asarray(out["attention"]), beta, beta


def render(path, crop, attention, beta, ranking, names, top, title):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  side = int(round(np.sqrt(attention.shape[-1])))
  order = np.argsort(-ranking)[:top]
  cols = min(top + 1, 4)
  rows = int(np.ceil((len(order) + 1) / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.5 * rows), dpi=90, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  axes[0, 0].imshow(crop)
  axes[0, 0].set_title(title, fontsize=8)
  size = crop.shape[0]
  for k, i in enumerate(order, start=1):
    ax = axes[k // cols, k % cols]
    amap = attention[i].reshape(side, side)
    amap = amap / max(float(amap.max()), 1e-12)
    up = np.asarray(Image.fromarray((amap * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)) / 255.0
    ax.imshow(crop)
    ax.imshow(up, cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax.set_title(f"{names[i]}\nβ={beta[i]:.2f}  score={ranking[i]:.3f}", fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv=None):
  p = cli.ArgumentParser("attention_maps", description=__doc__)
  p.add_argument("--run", required=True, help="training workdir of a dazle/vsmr run (config.json + checkpoints)")
  p.add_argument("--step", type=int, default=-1, help="checkpoint step to load (-1: latest)")
  p.add_argument("--images", nargs="+", required=True, help="image files to draw the maps on")
  p.add_argument("--weights", default=None, help="torchvision ResNet checkpoint (.pth) to compute region features "
                 "from the images; the one used to extract the run's features")
  p.add_argument("--rows", nargs="+", type=int, default=None, help="instead of --weights: rows of the run's feature "
                 "file holding these images' features (same order as --images); true labels are shown")
  p.add_argument("--out", required=True, help="output folder for <image name>_attention.png")
  p.add_argument("--top", type=int, default=6, help="number of attributes to show")
  p.add_argument("--rank", choices=("contribution", "beta"), default="contribution",
                 help="rank attributes by β·e·z of the predicted class (DAZLE) or by β alone")
  args = p.parse_args(argv)
  try:
    if (args.weights is None) == (args.rows is None):
      raise UserError("pass exactly one of --weights (features from the images) or --rows (features from the file)")
    if args.rows is not None and len(args.rows) != len(args.images):
      raise UserError(f"{len(args.rows)} --rows for {len(args.images)} --images; give one row per image")
    for path in args.images:
      if not os.path.isfile(path):
        raise UserError(f"image {path} not found")
    paths.check_writable_dir(args.out, "--out")
    trainer, variables = load_run(args.run, args.step)
    ds = trainer.dataset
    labels = [None] * len(args.images)
    if args.rows is not None:
      if max(args.rows) >= len(ds.labels) or min(args.rows) < 0:
        raise UserError(f"--rows must lie in [0, {len(ds.labels)}) for {ds.name}")
      feats = ds.features.get_batch(np.asarray(args.rows))
      labels = [int(ds.labels[r]) for r in args.rows]
    else:
      feats = image_features(args.images, args.weights)
      if feats.shape[-1] != ds.features.feature_dim:
        raise UserError(f"the backbone gives {feats.shape[-1]}-d features but the run was trained on "
                        f"{ds.features.feature_dim}-d ones; pass the weights used for extraction")
    pred, attention, beta, contrib = explain(trainer, variables, feats)
    ranking = beta if args.rank == "beta" else contrib
    os.makedirs(args.out, exist_ok=True)
    for n, path in enumerate(args.images):
      parts = [os.path.basename(path)]
      if pred is not None:
        parts.append(f"predicted: {ds.class_names[pred[n]]}")
      if labels[n] is not None:
        parts.append(f"true: {ds.class_names[labels[n]]}")
      out = os.path.join(args.out, f"{pathlib.Path(path).stem}_attention.png")
      render(out, display_crop(path), attention[n], beta[n], ranking[n], ds.attribute_names, args.top,
             "\n".join(parts))
      print(out)
  except UserError as e:
    cli.report("attention_maps", e)
    return cli.EXIT_USER_ERROR
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
