"""The HGR/CLIP image loader against torchvision's CLIP transform, at the tolerance stated in `transforms`.

`LoadImage` sends uint8 [S, S, 3] and `CLIP.encode_image` normalises on device; together they must
give torchvision's Resize(S, bicubic) / CenterCrop / ToTensor / Normalize: exactly (1e-6) for images
under twice the target or with draft off, within mean 0.08 / max 0.8 normalised units per image
for JPEGs decoded at a reduced DCT scale.
"""
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from zsl_jax.data import images
from zsl_jax.data import transforms
from zsl_jax.models.clip import model as clip_lib
from zsl_jax.projects.hgr.data import imagenet21k

S = 224
EXACT_SIZES = ((300, 260), (260, 340), (400, 350), (500, 375), (447, 600))  # shorter side < 2 S
DRAFT_SIZES = ((520, 460), (900, 700), (700, 1000), (1000, 1800))         # drafted 1/2, 1/2, 1/2, 1/4
MEAN_TOL, MAX_TOL = transforms.DRAFT_MEAN_TOL, transforms.DRAFT_MAX_TOL  # normalised units


def _photo(rng, width, height):
  """Smooth colour fields, hard-edged discs, mild noise: edges and texture, where resamplers differ."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  img = np.full((height, width, 3), 128.0, np.float32)
  for _ in range(3):
    fx, fy = rng.uniform(0.5, 12.0, 2) * 2 * np.pi / np.array([width, height])
    img += rng.uniform(10, 40, 3).astype(np.float32) * np.sin(fx * xx + fy * yy + rng.uniform(0, 6.3))[..., None]
  for _ in range(4):
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
  img += rng.normal(0, 6, img.shape).astype(np.float32)
  return np.clip(img, 0, 255).astype(np.uint8)


class _Files:
  """Index for `LoadImage`: row -> (path, label, path)."""

  def __init__(self, paths):
    self.paths = paths

  def read(self, row):
    return self.paths[row], row, self.paths[row]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
  root = tmp_path_factory.mktemp("loader_parity")
  rng = np.random.default_rng(0)
  paths = []
  for i, (w, h) in enumerate(EXACT_SIZES + DRAFT_SIZES):
    paths.append(str(root / f"{i}.JPEG"))
    Image.fromarray(_photo(rng, w, h)).save(paths[-1], format="JPEG", quality=90)
  return paths


@pytest.fixture(scope="module")
def reference():
  """path, size -> torchvision's CLIP eval transform (as open_clip and OpenAI's CLIP build it), NHWC."""
  from zsl_jax.models.torch_io import import_torchvision  # pylint: disable=import-outside-toplevel
  tv = import_torchvision()

  def transform(path, size=S):
    tf = tv.transforms.Compose([
        tv.transforms.Resize(size, interpolation=tv.transforms.InterpolationMode.BICUBIC),
        tv.transforms.CenterCrop(size), tv.transforms.ToTensor(),
        tv.transforms.Normalize(transforms.CLIP_MEAN, transforms.CLIP_STD)])
    return tf(Image.open(path).convert("RGB")).numpy().transpose(1, 2, 0)
  return transform


def _loaded(paths, draft, size=S):
  """uint8 [N, S, S, 3] from the loader, and whether each file was drafted."""
  load = imagenet21k.LoadImage(_Files(paths), size, "clip", draft=draft)
  out = [load.map({"row": r}) for r in range(len(paths))]
  assert all(o["_mask"] and o["image"].dtype == np.uint8 for o in out)
  drafted = [images.decode(p, size if draft else None).scale > 1 for p in paths]
  return np.stack([o["image"] for o in out]), drafted


normalise = jax.jit(transforms.normalize_on_device)


@pytest.mark.torch
@pytest.mark.parametrize("draft", [False, True])
def test_exact_path_equals_torchvision(jpegs, reference, draft):
  """Every image with draft off, and images under 2 S with draft on: torchvision's numbers."""
  paths = jpegs if not draft else jpegs[:len(EXACT_SIZES)]
  pixels, drafted = _loaded(paths, draft)
  assert not any(drafted)
  for x, path in zip(np.asarray(normalise(pixels)), paths):
    np.testing.assert_allclose(x, reference(path), rtol=0, atol=1e-6, err_msg=path)


@pytest.mark.torch
def test_draft_path_within_stated_tolerance(jpegs, reference):
  paths = jpegs[len(EXACT_SIZES):]
  pixels, drafted = _loaded(paths, True)
  assert all(drafted)
  exact, _ = _loaded(paths, False)
  assert (pixels != exact).any()  # the fast path really differs, so the bounds below are exercised
  for x, path in zip(np.asarray(normalise(pixels)), paths):
    diff = np.abs(x - reference(path))
    assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (path, diff.mean(), diff.max())


@pytest.mark.torch
def test_draft_tolerance_on_real_photos(reference):
  """sklearn's two photos (640 x 427, fine texture) at targets where they draft to 1/2 and 1/4."""
  sklearn_images = pytest.importorskip("sklearn.datasets.images")
  folder = os.path.dirname(sklearn_images.__file__)
  for name in ("china.jpg", "flower.jpg"):
    path = os.path.join(folder, name)
    for size in (96, 208):
      pixels, drafted = _loaded([path], True, size)
      assert drafted == [True]
      diff = np.abs(np.asarray(normalise(pixels[0])) - reference(path, size))
      assert diff.mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (name, size, diff.mean(), diff.max())


def test_draft_keeps_shorter_side_and_geometry():
  """DCT scaling picks the largest 1/2^k that keeps the shorter side >= S; non-JPEGs are never drafted."""
  rng = np.random.default_rng(1)
  img = _photo(rng, 1000, 700)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=90)
  for size, scale in ((64, 8), (100, 4), (200, 2), (350, 2), (351, 1)):
    d = images.decode(buf.getvalue(), size)
    assert (d.scale, d.full_size) == (scale, (1000, 700)) and min(d.image.size) >= size
  png = io.BytesIO()
  Image.fromarray(img).save(png, format="PNG")
  d = images.decode(png.getvalue(), 64)
  assert (d.scale, d.kind, d.image.size) == (1, "not_jpeg:PNG", (1000, 700))
  # A drafted image keeps the reference's geometry although its size was rounded up (1207 -> 151 = 1208 / 8):
  # a bright disc stays where the exact path puts it (resizing the drafted image as is shifts it 0.13-0.34 px).
  x = np.zeros((903, 1207, 3), np.uint8)
  yy, xx = np.mgrid[0:903, 0:1207]
  x[(yy - 700) ** 2 + (xx - 900) ** 2 < 60 ** 2] = 255
  buf = io.BytesIO()
  Image.fromarray(x).save(buf, format="JPEG", quality=95)
  centroid = lambda m: np.argwhere(m.mean(-1) > 128).mean(0)  # noqa: E731
  for size, scale in ((100, 8), (200, 4), (300, 2)):
    d = images.decode(buf.getvalue(), size)
    exact = transforms.clip_pixels(images.decode(buf.getvalue()).image, size)
    shift = centroid(transforms.clip_pixels(d.image, size, d.scale, d.full_size)) - centroid(exact)
    assert d.scale == scale and np.abs(shift).max() < 0.08, (size, shift)


def test_encode_image_normalises_uint8_on_device():
  """CLIP.encode_image(uint8) == encode_image(host-normalised float32): the loader's path into the model."""
  config = clip_lib.CLIPConfig(embed_dim=16, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8,
                               vision_patch_size=None, context_length=8, vocab_size=64, transformer_width=16,
                               transformer_heads=2, transformer_layers=1)
  module = clip_lib.CLIP(config)
  variables = clip_lib.init_variables(config)
  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  encode = jax.jit(lambda v, x: module.apply(v, x, method=clip_lib.CLIP.encode_image))
  host = np.stack([transforms.normalize(p, transforms.CLIP_MEAN, transforms.CLIP_STD) for p in pixels])
  np.testing.assert_allclose(np.asarray(normalise(pixels)), host, rtol=0, atol=1e-6)  # XLA: within 5e-7
  got, want = encode(variables, jnp.asarray(pixels)), encode(variables, jnp.asarray(host))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(got - encode(variables, jnp.asarray(host[::-1]))).max()) > 1e-3  # inputs matter
