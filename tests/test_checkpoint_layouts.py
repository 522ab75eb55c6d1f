"""Checkpoints of an older state layout still restore: extra entries on disk are ignored, missing ones are an error.

DAZLE/VSMR checkpoints written before evaluators got the step as an argument carry a
`model_state.progress` collection that today's models no longer have.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zsl_jax import checkpoint as ckpt_lib
from zsl_jax import metrics
from zsl_jax.errors import UserError

ONE = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _state(with_progress):
  model_state = {"constants": {"att": jnp.arange(6.0).reshape(2, 3)}}
  if with_progress:
    model_state["progress"] = {"step": jnp.int32(30)}
  return {"step": jnp.int32(30), "params": {"W": jnp.ones((3, 2))}, "model_state": model_state}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=ONE), tree)


@pytest.fixture
def old_checkpoint(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path / ckpt_lib.CHECKPOINT_DIR, async_save=False)
  ck.save(30, _state(with_progress=True))
  ck.close()
  return tmp_path


def test_resume_and_eval_ignore_the_old_progress_collection(old_checkpoint):
  ck = ckpt_lib.Checkpointer(old_checkpoint / ckpt_lib.CHECKPOINT_DIR)
  state, step = ck.restore(_abstract(_state(with_progress=False)))
  ck.save(31, {**state, "step": jnp.int32(31)})  # the same manager saves again after restoring
  ck.close()
  assert step == 30 and "progress" not in state["model_state"]
  np.testing.assert_array_equal(state["model_state"]["constants"]["att"], np.arange(6.0).reshape(2, 3))
  target = {k: v for k, v in _abstract(_state(with_progress=False)).items() if k in ("params", "model_state")}
  restored, step = ckpt_lib.restore_subtree(old_checkpoint, target, 30)
  assert step == 30 and set(restored["model_state"]) == {"constants"}


def test_an_entry_missing_on_disk_is_an_error(old_checkpoint):
  bigger = _state(with_progress=True)
  bigger["params"]["b"] = jnp.zeros(2)
  ck = ckpt_lib.Checkpointer(old_checkpoint / ckpt_lib.CHECKPOINT_DIR)
  with pytest.raises(UserError, match=r"lacks \['params'\]\['b'\]"):
    ck.restore(_abstract(bigger))
  ck.close()


def test_decided_on_main_round_trips_through_json():
  value = metrics.decided_on_main(lambda: (0.1 + 0.2, 7, {"gzsl_h": float("nan")}))
  assert value[0] == 0.1 + 0.2 and value[1] == 7 and np.isnan(value[2]["gzsl_h"])
  assert isinstance(value, list)  # the same type on one process as on many
