"""Importing torchvision / open_clip on a CPU-only torch, for parity tests and benchmarks.

The PyPI torchvision wheel is a CUDA build; with CPU torch its C++ ops library fails to load and
its meta registrations then crash on the missing `torchvision::nms` schema. Defining the two
schemas first lets the pure-Python parts (models, transforms) import. With a matching CUDA torch
the real ops load and this is a no-op.
"""
import functools


@functools.lru_cache(maxsize=None)
def import_torchvision():
  """Returns the `torchvision` module, applying the CPU schema shim when needed."""
  import torch  # pylint: disable=import-outside-toplevel
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
    return torchvision
  except RuntimeError:
    pass
  lib = torch.library.Library("torchvision", "DEF")
  lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  import_torchvision.lib = lib  # Keep the library object alive for the process lifetime.
  import sys  # pylint: disable=import-outside-toplevel
  for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
    del sys.modules[name]
  import torchvision  # pylint: disable=import-outside-toplevel
  return torchvision


def import_open_clip():
  """Returns the `open_clip` module (needs torchvision, hence the shim)."""
  import_torchvision()
  import open_clip  # pylint: disable=import-outside-toplevel
  return open_clip
