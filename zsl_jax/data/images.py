"""Robust image decoding shared by every pipeline (ImageNet-21K, AWA2/CUB/SUN extraction).

Large scraped image sets contain files that crash naive loaders: truncated JPEGs, CMYK or
greyscale JPEGs, PNGs (or GIFs) saved with a `.JPEG` name. Decodable-but-odd files are converted
to RGB and reported by `kind`; undecodable ones raise `CorruptImageError` so that pipelines can
skip and count them instead of dying hours into a run.
"""
import io
import os

import numpy as np
from PIL import Image


class CorruptImageError(Exception):
  """The file exists but cannot be decoded into an image."""


def _open(source):
  if isinstance(source, (bytes, bytearray, memoryview)):
    return Image.open(io.BytesIO(bytes(source)))
  return Image.open(os.fspath(source))


def decode_rgb(source):
  """Decodes a path or encoded bytes into an RGB `PIL.Image`.

  Returns:
    (image, kind): `kind` is None for an ordinary RGB JPEG, else one of "cmyk", "grayscale",
    "palette", "rgba", "other_mode" (converted colour modes) or "not_jpeg:<FORMAT>" (a PNG/GIF/...
    behind any file name), so callers can report what they repaired.
  Raises:
    CorruptImageError: truncated or undecodable data.
    FileNotFoundError: the path does not exist.
  """
  try:
    img = _open(source)
    img.load()  # Forces the full decode: truncation surfaces here, not later in a worker.
  except FileNotFoundError:
    raise
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise CorruptImageError(f"{source if isinstance(source, (str, os.PathLike)) else '<bytes>'}: {e}") from e
  kind = None
  if img.format not in ("JPEG", "MPO"):
    kind = f"not_jpeg:{img.format}"
  if img.mode != "RGB":
    mode_kind = {"CMYK": "cmyk", "L": "grayscale", "1": "grayscale", "I;16": "grayscale", "I": "grayscale",
                 "P": "palette", "RGBA": "rgba", "LA": "grayscale"}.get(img.mode, "other_mode")
    kind = kind or mode_kind
    img = img.convert("RGB")
  return img, kind


def encode_jpeg(array, quality=90):
  """[H, W, 3] uint8 -> JPEG bytes (used by the demo-data generators and the ArrayRecord builder)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()
