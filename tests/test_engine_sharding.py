"""One train step on a (data=4, fsdp=2) mesh equals the same step on one device."""
import jax
import numpy as np
import pytest

from tests import toy_config
from zsl_jax import engine
from zsl_jax import sharding


def _one_step(tmp_path, mesh_shape, devices):
  config = toy_config.get_config()
  config.sharding.strategy = "fsdp"
  config.sharding.min_fsdp_size = 64  # Shard the toy's [16, 32] and [32, 4] kernels too.
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape)), devices)
  eng = engine.Engine(config, tmp_path, mesh=mesh)
  state = eng.build_state(with_optimizer=True)
  step = eng.make_train_step()
  batch = sharding.global_batch(next(eng.trainer.train_iterator()), mesh)
  new_state, measured = step(state, batch)
  return eng, new_state, jax.device_get(new_state), jax.device_get(measured)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  return _one_step(tmp_path_factory.mktemp("single"), (1, 1), jax.devices()[:1])


def test_sharded_step_matches_single_device(tmp_path, single):
  assert jax.device_count() == 8
  eng, sharded_state, state8, m8 = _one_step(tmp_path, (4, 2), jax.devices())
  _, _, state1, m1 = single
  # The state really is split: the hidden kernel lives in halves on the fsdp axis.
  kernel = sharded_state["params"]["Dense_0"]["kernel"]
  assert "fsdp" in tuple(kernel.sharding.spec)
  assert kernel.addressable_shards[0].data.shape[0] * 2 == kernel.shape[0] or \
      kernel.addressable_shards[0].data.shape[1] * 2 == kernel.shape[1]
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-6, atol=1e-6)
  flat8, tree8 = jax.tree.flatten(state8)
  flat1, tree1 = jax.tree.flatten(state1)
  assert tree8 == tree1
  for a, b in zip(flat8, flat1):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  # And the step did something: parameters moved away from their initial values.
  init = jax.device_get(eng.build_state(with_optimizer=True))
  assert np.abs(init["params"]["Dense_0"]["kernel"] - state8["params"]["Dense_0"]["kernel"]).max() > 1e-3


def test_fsdp_rule_shards_largest_divisible_axis(tmp_path):
  mesh = sharding.make_mesh(dict(data=4, fsdp=2))
  tree = {"big": jax.ShapeDtypeStruct((6, 1024), np.float32), "odd": jax.ShapeDtypeStruct((3, 5), np.float32),
          "vec": jax.ShapeDtypeStruct((4096,), np.float32)}
  cfg = dict(strategy="fsdp", min_fsdp_size=1024, rules=(("vec", "replicate"),))
  out = sharding.infer_shardings(tree, mesh, cfg)
  assert tuple(out["big"].spec) == (None, "fsdp")
  assert tuple(out["odd"].spec) == ()
  assert tuple(out["vec"].spec) == ()


def test_mesh_errors_name_the_fix():
  from zsl_jax.errors import UserError
  with pytest.raises(UserError, match="needs 6 devices"):
    sharding.make_mesh(dict(data=3, fsdp=2))
  with pytest.raises(UserError, match="cannot fill"):
    sharding.make_mesh(dict(data=-1, fsdp=3))
