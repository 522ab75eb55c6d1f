"""Reading torch files safely, and importing torchvision / open_clip on a CPU-only torch.

`read_torch_file` is the one reader of torch weights in zsl_jax: TorchScript archives (OpenAI CLIP),
`.safetensors`, and `torch.save` pickles, always with `weights_only=True`, so a file never runs code
of its own. A whole pickled model (`torch.save(model)`) of a class the caller names is read with an
inert stand-in class, which only holds the pickled parameters; anything else that is not plain
weights ends with one line saying how to re-save it.

The PyPI torchvision wheel is a CUDA build; with CPU torch its C++ ops library fails to load and
its meta registrations then crash on the missing `torchvision::nms` schema. Defining the two
schemas first lets the pure-Python parts (models, transforms) import. With a matching CUDA torch
the real ops load and this is a no-op.
"""
import functools
import os
import re
import sys
import zipfile

from zsl_jax.errors import UserError

# Globals torch names when weights_only refuses one ("Unsupported global: GLOBAL a.b.C ...").
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")
# torch.nn building blocks a pickled model is made of; read as stand-ins like the model itself.
_TORCH_MODULES = "torch.nn.modules."
# torch's legacy (pre-1.6, non-zip) `torch.save` files start with this 10-byte magic number, pickled as a long.
_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_PYTHON_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def _unreadable(path, what, error):
  """The one line for a file that is no torch/safetensors file at all (random bytes, cut short)."""
  text = str(error).split("WeightsUnpickler error:", 1)[-1]  # torch's advice before it is about pickles
  lines = [line.strip() for line in text.splitlines()
           if line.strip() and not line.strip().startswith("Check the documentation")]
  detail = lines[0][:100] if lines else "no details"
  return UserError(f"{path} is not a readable torch checkpoint or safetensors file ({type(error).__name__}: "
                   f"{detail}); the {what} is truncated or corrupt, or of another format: download or copy it again")


def _kind(path):
  """"zip" (torch.save since 1.6, TorchScript), "legacy" (older torch.save), "pickle" (a plain pickle, which
  torch only reads to refuse), "safetensors", or None: not a file torch or safetensors could read."""
  if path.endswith(".safetensors"):
    return "safetensors"
  if zipfile.is_zipfile(path):
    return "zip"
  with open(path, "rb") as f:
    head = f.read(64)
  if _LEGACY_MAGIC in head:
    return "legacy"
  if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
    return "pickle"
  if head[8:10] in (b'{"', b"{}"):  # u64 header length, then the JSON header
    return "safetensors"
  return None


def _not_torch(path, what):
  return UserError(f"{path} is not a readable torch checkpoint or safetensors file (no torch or safetensors "
                   f"header); the {what} is truncated or corrupt, or of another format: download or copy it again")


def read_torch_file(path, what, model_classes=()):
  """The object stored in a torch weights file: a {name: tensor or array} dict for the usual files.

  Args:
    path: a `.safetensors` file (numpy arrays back, no torch needed), a TorchScript archive (its
      state_dict), or a `torch.save` file (whatever it holds, read with weights_only=True).
    what: what the file should be, for messages ("CLIP checkpoint", "ResNet weights").
    model_classes: class names (e.g. "DAZLE") of whole pickled models to accept; such a file gives
      an inert `torch.nn.Module` whose `state_dict()` holds the pickled parameters and buffers.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"{what} {path} does not exist; check the path")
  kind = _kind(path)
  if kind is None:
    raise _not_torch(path, what)
  if kind == "safetensors":
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      return load_file(path)
    except Exception as e:  # pylint: disable=broad-except  (safetensors raises several types)
      raise _unreadable(path, what, e) from None
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"reading the {what} {path} needs torch: pip install torch (the CPU build is enough)") from None
  if _is_torchscript(path):
    try:
      return torch.jit.load(path, map_location="cpu").state_dict()
    except Exception as e:  # pylint: disable=broad-except
      raise _unreadable(path, what, e) from None
  return _load_weights_only(torch, path, what, model_classes)


def _load_weights_only(torch, path, what, model_classes):
  """torch.load(weights_only=True), with stand-ins for the pickled model classes the caller accepts."""
  stand_ins = {}
  for _ in range(64):  # one more stand-in per round for legacy (non-zip) files; zip files need one round
    try:
      with torch.serialization.safe_globals([(cls, name) for name, cls in stand_ins.items()]):
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pylint: disable=broad-except  (torch raises many types for bad files)
      if "persistent_load" in str(e):  # torch's legacy format stores a pickled model's source code
        raise _not_weights(path, what, "a whole model with its source code (legacy format)") from None
      names = _refused_globals(torch, path, e)
      if not names:
        raise _unreadable(path, what, e) from None
      if not all(_PYTHON_NAME.fullmatch(n) for n in names):
        raise _not_torch(path, what) from None  # garbage read as pickle opcodes, not Python objects
      other = [n for n in names if not _may_stand_in(n, model_classes)]
      if other:
        raise _not_weights(path, what, f"Python objects ({', '.join(other[:3])})") from None
      if set(names) <= set(stand_ins):
        raise _unreadable(path, what, e) from None
      stand_ins.update({n: _stand_in(torch, n) for n in names})
  raise _not_weights(path, what, "too many Python classes")


def _not_weights(path, what, held):
  return UserError(f"{path} is not a plain weights file: it pickles {held}, and only tensors are loaded (for "
                   f"safety); re-save just the tensors in an environment you trust, e.g. "
                   f"torch.save(model.state_dict(), 'weights.pth'), and pass that {what}")


def _refused_globals(torch, path, error):
  """Names of the non-weight Python objects a torch file refers to; [] when the file is just unreadable."""
  try:
    return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
  except Exception:  # pylint: disable=broad-except  (legacy non-zip files, unreadable files)
    return _GLOBAL_RE.findall(str(error))


def _may_stand_in(name, model_classes):
  """The accepted model classes, and the torch.nn modules they are built of (only where models are accepted)."""
  return bool(model_classes) and (name.startswith(_TORCH_MODULES) or name.rsplit(".", 1)[-1] in model_classes)


def _stand_in(torch, name):
  """An empty torch.nn.Module subclass: unpickling fills its __dict__ and calls no code from the file."""
  return type(name.rsplit(".", 1)[-1], (torch.nn.Module,), {"__module__": "zsl_jax.stand_in"})


def _is_torchscript(path):
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("constants.pkl") for n in z.namelist())


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
  for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
    del sys.modules[name]
  import torchvision  # pylint: disable=import-outside-toplevel
  return torchvision


def import_open_clip():
  """Returns the `open_clip` module (needs torchvision, hence the shim)."""
  import_torchvision()
  import open_clip  # pylint: disable=import-outside-toplevel
  return open_clip
