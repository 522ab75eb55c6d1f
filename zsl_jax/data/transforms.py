"""Deterministic evaluation transforms, with their numerical tolerance against torchvision's.

CLIP (`clip_pixels`, `clip_preprocess`) and the DAZLE ResNet-101 features (`imagenet_preprocess`)
are defined by torchvision pipelines (Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize).
torchvision applies them through PIL for PIL inputs, so the same PIL calls here give the same pixels.

The image loaders send CLIP inputs to the device as uint8 (a quarter of float32's bytes) and the
model normalises them there (`normalize_on_device`). Tolerance against torchvision's
Resize(S, bicubic) / CenterCrop(S) / ToTensor / Normalize(CLIP mean, std), in normalised units
(1 unit = 255 * std ~ 69 grey levels), checked by tests/test_loader_parity.py:
  - exact path (no draft; images under twice the target): identical uint8 pixels; after
    normalisation max |diff| <= 1e-6.
  - draft path (JPEGs whose shorter side is >= 2 S, decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain, then one bicubic resize of the crop region): per image, mean |diff| <= 0.08 and
    max |diff| <= 0.8. Worst cases measured: mean 0.065 on benchmarks/loader.py's heavily grained
    JPEGs at 112 px, max 0.77 (mean 0.051) on a real photo with fine texture drafted to a shorter
    side just above S, where the DCT-domain reduction, sharper than the reference's wide bicubic
    filter, does nearly all the shrinking. The differences sit on edges and fine texture.
    `LoadImage(draft=False)` keeps the exact path for every image.
"""
import jax.numpy as jnp
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The stated per-image tolerance of the draft path (module docstring), in normalised units.
DRAFT_MEAN_TOL, DRAFT_MAX_TOL = 0.08, 0.8

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
# Drafted images only: reduce() by an integer factor first while the rest still shrinks >= 3x
# (PIL documents the result as indistinguishable from a full resample in most cases).
_REDUCING_GAP = 3.0


def resize_target(width, height, size):
  """(w, h) after torchvision.Resize(int): shorter side `size`, longer side truncated."""
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = size, int(size * long / short)
  return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_shorter(img, size, resample="bilinear"):
  """Resizes so the shorter side is `size`, keeping aspect as torchvision.Resize(int) does."""
  if min(img.size) == size:
    return img
  return img.resize(resize_target(*img.size, size), _RESAMPLE[resample])


def crop_box(width, height, size):
  """The region (left, top, right, bottom) of a width x height image, in its own pixels, that
  Resize(size) + CenterCrop(size) maps onto the output (for images at least `size` on each side)."""
  new_w, new_h = resize_target(width, height, size)
  sx, sy = width / new_w, height / new_h
  left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
  return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def center_crop(img, size):
  """torchvision.CenterCrop: zero-pads if the image is smaller, then crops the rounded centre."""
  w, h = img.size
  if w < size or h < size:
    padded = Image.new(img.mode, (max(w, size), max(h, size)))
    left, top = (max(size - w, 0)) // 2, (max(size - h, 0)) // 2
    padded.paste(img, (left, top))
    img, (w, h) = padded, padded.size
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return img.crop((left, top, left + size, top + size))


def normalize(img, mean, std):
  """PIL RGB (or uint8 [H, W, 3]) -> float32 [H, W, 3] with (x / 255 - mean) / std (NHWC, as JAX convs want)."""
  # uint8 view first: PIL -> float32 directly is ~10x slower; in-place ops give the same bits.
  x = np.asarray(img).astype(np.float32)
  x /= np.float32(255.0)
  x -= np.asarray(mean, np.float32)
  x /= np.asarray(std, np.float32)
  return x


def normalize_on_device(images, mean=CLIP_MEAN, std=CLIP_STD):
  """uint8 [..., 3] -> float32 (x / 255 - mean) / std inside jit: `normalize`'s ops (XLA's division
  rounds differently: within 5e-7)."""
  x = images.astype(jnp.float32) / jnp.float32(255.0)
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def clip_pixels(img, size=224, scale=1, full_size=None):
  """OpenAI CLIP's Resize(size, bicubic) -> CenterCrop(size) as uint8 [size, size, 3], before Normalize.

  `scale` > 1: `img` was decoded at 1/scale of its `full_size` (w, h) (`images.decode(min_short=size)`);
  one bicubic resize maps the reference's crop region, in drafted pixels, straight to the output,
  which keeps the geometry of the full-size path (the module docstring states the tolerance).
  """
  if img.mode != "RGB":  # convert() would copy an RGB image too
    img = img.convert("RGB")
  if scale == 1:
    return np.asarray(center_crop(resize_shorter(img, size, "bicubic"), size))
  box = tuple(v / scale for v in crop_box(*full_size, size))
  return np.asarray(img.resize((size, size), Image.BICUBIC, box=box, reducing_gap=_REDUCING_GAP))


def clip_preprocess(img, size=224):
  """OpenAI CLIP: Resize(size, bicubic) -> CenterCrop(size) -> RGB -> CLIP mean/std (float32, on the host)."""
  return normalize(clip_pixels(img, size), CLIP_MEAN, CLIP_STD)


def imagenet_preprocess(img, resize=224, crop=224):
  """torchvision ResNet eval: Resize(resize, bilinear) -> CenterCrop(crop) -> ImageNet mean/std."""
  img = center_crop(resize_shorter(img.convert("RGB"), resize, "bilinear"), crop)
  return normalize(img, IMAGENET_MEAN, IMAGENET_STD)
