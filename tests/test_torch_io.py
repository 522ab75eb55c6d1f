"""`zsl_jax.models.torch_io.read_torch_file`: the one torch-file reader, weights only (issue 12).

Plain state dicts, safetensors and TorchScript archives load; a whole pickled DAZLE model (as
`torch.save(model)` writes it) loads through inert stand-in classes without running code from the
file; everything else that is not plain weights, and bytes that are no torch file at all, end with
one UserError line saying which of the two it is.
"""
import os
import pickle

import numpy as np
import pytest
import torch

from zsl_jax.errors import UserError
from zsl_jax.models import torch_io
from zsl_jax.projects.attr.tools import import_dazle


class DAZLE(torch.nn.Module):
  """Shaped like the official `core.DAZLE.DAZLE`: parameters, a submodule, plain tensor attributes."""

  def __init__(self):
    super().__init__()
    g = torch.Generator().manual_seed(0)
    self.V = torch.nn.Parameter(torch.randn(5, 4, generator=g))
    self.W_1 = torch.nn.Parameter(torch.randn(4, 8, generator=g))
    self.att = torch.nn.Parameter(torch.rand(6, 5, generator=g), requires_grad=False)
    self.log_softmax_func = torch.nn.LogSoftmax(dim=1)
    self.seenclass = torch.arange(4)
    self.loss_type = "CE"


class RunsCode:
  """A pickle that would call os.system on load."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def _state(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def test_state_dicts_safetensors_and_torchscript(tmp_path):
  model = DAZLE()
  torch.save(model.state_dict(), tmp_path / "sd.pth")
  got = torch_io.read_torch_file(tmp_path / "sd.pth", "test weights")
  assert {k: v.numpy().tolist() for k, v in got.items()} == {k: v.tolist() for k, v in _state(model).items()}
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  save_file(model.state_dict(), tmp_path / "w.safetensors")
  got = torch_io.read_torch_file(tmp_path / "w.safetensors", "test weights")
  assert isinstance(got["W_1"], np.ndarray) and np.array_equal(got["W_1"], _state(model)["W_1"])
  torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), tmp_path / "ts.pt")
  assert set(torch_io.read_torch_file(tmp_path / "ts.pt", "test weights")) == {"weight", "bias"}


def test_whole_pickled_model_reads_through_stand_ins(tmp_path):
  model = DAZLE()
  path = tmp_path / "whole.pth"
  torch.save(model, path)
  obj = torch_io.read_torch_file(path, "DAZLE checkpoint", model_classes=("DAZLE",))
  assert type(obj) is not DAZLE and type(obj).__name__ == "DAZLE" and obj.loss_type == "CE"
  assert {k: v.tolist() for k, v in _state(obj).items()} == {k: v.tolist() for k, v in _state(model).items()}
  with pytest.raises(UserError, match=r"not a plain weights file: it pickles Python objects \(.*DAZLE") as e:
    torch_io.read_torch_file(path, "CLIP checkpoint")
  assert "torch.save(model.state_dict()" in str(e.value) and "\n" not in str(e.value)
  # torch's pre-1.6 format stores the model's source code with it: refused, saying so.
  torch.save(model, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  with pytest.raises(UserError, match=r"not a plain weights file: it pickles a whole model with its source code"):
    torch_io.read_torch_file(tmp_path / "legacy.pth", "DAZLE checkpoint", model_classes=("DAZLE",))


def test_import_dazle_reads_a_whole_model_and_training_checkpoints(tmp_path):
  model = DAZLE()
  torch.save({"epoch": 3, "model": model}, tmp_path / "ckpt.pth")
  torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "dp.pth")
  for name in ("ckpt.pth", "dp.pth"):
    sd = import_dazle.read_torch_state_dict(tmp_path / name)
    assert sorted(sd) == ["V", "W_1", "att"] and np.array_equal(sd["V"].numpy(), _state(model)["V"])


def test_other_pickled_objects_are_refused_without_running_them(tmp_path):
  marker = tmp_path / "ran"
  torch.save({"w": RunsCode(marker)}, tmp_path / "evil.pth")
  torch.save({"w": RunsCode(marker)}, tmp_path / "evil_legacy.pth", _use_new_zipfile_serialization=False)
  with open(tmp_path / "evil.pkl", "wb") as f:
    pickle.dump({"w": RunsCode(marker)}, f, protocol=2)
  torch.save({"w": torch.ones(2), "opt": np.zeros(3)}, tmp_path / "numpy.pth")
  for name, shown in (("evil.pth", "system"), ("evil_legacy.pth", "system"), ("evil.pkl", "system"),
                      ("numpy.pth", "numpy")):
    with pytest.raises(UserError, match=f"not a plain weights file: it pickles Python objects .*{shown}"):
      torch_io.read_torch_file(tmp_path / name, "DAZLE checkpoint", model_classes=("DAZLE",))
  assert not marker.exists()


def test_bytes_that_are_no_torch_file(tmp_path):
  (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4000))
  torch.save(DAZLE().state_dict(), tmp_path / "full.pth")
  data = (tmp_path / "full.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
  (tmp_path / "cut.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{")
  for name in ("random.pth", "cut.pth", "cut.safetensors"):
    with pytest.raises(UserError, match="is not a readable torch checkpoint or safetensors file") as e:
      torch_io.read_torch_file(tmp_path / name, "ResNet weights file")
    message = str(e.value)
    assert "truncated or corrupt" in message and "pickles" not in message and "\n" not in message, message
  with pytest.raises(UserError, match="ResNet weights file .*nope.pth does not exist"):
    torch_io.read_torch_file(tmp_path / "nope.pth", "ResNet weights file")
