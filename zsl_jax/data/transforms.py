"""Deterministic evaluation transforms, pixel-identical to torchvision's on PIL images.

CLIP (`clip_preprocess`) and the DAZLE ResNet-101 features (`imagenet_preprocess`) are defined by
torchvision pipelines (Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize). torchvision
applies them through PIL for PIL inputs, so doing the same PIL calls here gives identical pixels,
which the checkpoint-parity tests rely on.
"""
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def resize_shorter(img, size, resample="bilinear"):
  """Resizes so the shorter side is `size`, keeping aspect as torchvision.Resize(int) does."""
  w, h = img.size
  short, long = (w, h) if w <= h else (h, w)
  if short == size:
    return img
  new_short, new_long = size, int(size * long / short)
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  return img.resize((new_w, new_h), _RESAMPLE[resample])


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
  """PIL RGB -> float32 [H, W, 3] with (x / 255 - mean) / std (NHWC, the layout JAX convs want)."""
  # uint8 view first: PIL -> float32 directly is ~10x slower; in-place ops give the same bits.
  x = np.asarray(img).astype(np.float32)
  x /= np.float32(255.0)
  x -= np.asarray(mean, np.float32)
  x /= np.asarray(std, np.float32)
  return x


def clip_preprocess(img, size=224):
  """OpenAI CLIP: Resize(size, bicubic) -> CenterCrop(size) -> RGB -> CLIP mean/std."""
  img = center_crop(resize_shorter(img.convert("RGB"), size, "bicubic"), size)
  return normalize(img, CLIP_MEAN, CLIP_STD)


def imagenet_preprocess(img, resize=224, crop=224):
  """torchvision ResNet eval: Resize(resize, bilinear) -> CenterCrop(crop) -> ImageNet mean/std."""
  img = center_crop(resize_shorter(img.convert("RGB"), resize, "bilinear"), crop)
  return normalize(img, IMAGENET_MEAN, IMAGENET_STD)
