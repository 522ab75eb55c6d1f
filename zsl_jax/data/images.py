"""Robust image decoding shared by every pipeline (ImageNet-21K, AWA2/CUB/SUN extraction).

Large scraped image sets contain files that crash naive loaders: truncated JPEGs, CMYK or
greyscale JPEGs, PNGs (or GIFs) saved with a `.JPEG` name. Decodable-but-odd files are converted
to RGB and reported by `kind`; undecodable ones raise `CorruptImageError` so that pipelines can
skip and count them instead of dying hours into a run.
"""
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Decoded:
  """An RGB image and how it was obtained."""
  image: Image.Image
  kind: str | None  # None for an ordinary RGB JPEG, else what was repaired (see `decode_rgb`)
  scale: int = 1    # JPEG DCT-domain reduction applied while decoding: 1 (full size), 2, 4 or 8
  full_size: tuple = None  # (w, h) of the stored image; `image.size` is about full_size / scale


def decode(source, min_short=None):
  """Decodes a path or encoded bytes into a `Decoded` RGB image.

  `min_short`: when a JPEG's shorter side is at least twice this, decode it at 1/2, 1/4 or 1/8
  scale in the DCT domain (libjpeg scaling via PIL's `draft`), keeping the shorter side >= min_short:
  the pixels to produce and resize shrink with the square of the scale, at the tolerance stated in
  `zsl_jax.data.transforms`. None decodes at full size (bit-exact with PIL / torchvision).
  Raises:
    CorruptImageError: truncated or undecodable data.
    FileNotFoundError: the path does not exist.
  """
  scale = 1
  try:
    img = _open(source)
    full_size = img.size
    if min_short and img.format == "JPEG" and min(img.size) // int(min_short) >= 2:
      width = img.size[0]
      drafted = img.draft(None, (int(min_short), int(min_short)))
      if drafted is not None:
        scale = round(width / drafted[1][2])  # drafted box = (0, 0, width / scale, height / scale)
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
  return Decoded(img, kind, scale, full_size)


def decode_rgb(source):
  """Decodes a path or encoded bytes into an RGB `PIL.Image` at full size.

  Returns:
    (image, kind): `kind` is None for an ordinary RGB JPEG, else one of "cmyk", "grayscale",
    "palette", "rgba", "other_mode" (converted colour modes) or "not_jpeg:<FORMAT>" (a PNG/GIF/...
    behind any file name), so callers can report what they repaired.
  Raises:
    CorruptImageError: truncated or undecodable data.
    FileNotFoundError: the path does not exist.
  """
  decoded = decode(source)
  return decoded.image, decoded.kind


def encode_jpeg(array, quality=90):
  """[H, W, 3] uint8 -> JPEG bytes (used by the demo-data generators and the ArrayRecord builder)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()
