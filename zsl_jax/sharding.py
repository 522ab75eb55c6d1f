"""Device mesh, parameter partitioning and global batch assembly.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose devices
also split large parameters and their optimizer moments). Batches are split over both axes.
Parameters are replicated unless a rule or the `fsdp` strategy shards them; shardings are decided
from shapes (`jax.eval_shape`) before anything is materialised.
"""
import re

import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from zsl_jax.errors import UserError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
STRATEGIES = ("replicate", "fsdp")  # sharding.strategy, and the kind of each sharding.rules entry


def make_mesh(mesh_config, devices=None):
  """Mesh over `devices` (default: all, every host) with axes (data, fsdp); -1 fills one axis."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"{len(devices)} devices cannot fill mesh {dict(zip(MESH_AXES, sizes))}; "
                      f"make the fixed axis sizes divide {len(devices)}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices but "
                    f"{len(devices)} are available; set --config.mesh.data=-1 to use them all")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def path_str(path):
  """KeyPath -> "visual/conv1/kernel" (the names regex rules are written against)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _fsdp_spec(shape, fsdp_size, min_size):
  """Shards the largest axis divisible by the fsdp size; small or indivisible arrays replicate."""
  if fsdp_size == 1 or not shape or int(np.prod(shape)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def infer_shardings(abstract_tree, mesh, sharding_config):
  """NamedShardings for a pytree of ShapeDtypeStructs, from regex rules then the strategy.

  Optimizer moments have the same shapes and contain the parameter path in their own path, so
  one rule set shards parameters and their optimizer state alike.
  """
  rules = [(re.compile(rx), kind) for rx, kind in sharding_config.get("rules", ())]
  strategy = sharding_config.get("strategy", "replicate")
  if strategy not in STRATEGIES:
    raise UserError(f"sharding.strategy={strategy!r} is not one of: {', '.join(STRATEGIES)}")
  fsdp_size = mesh.shape["fsdp"]
  min_size = int(sharding_config.get("min_fsdp_size", 2 ** 18))

  def one(path, leaf):
    shape = getattr(leaf, "shape", ())
    name = path_str(path)
    kind = next((k for rx, k in rules if rx.search(name)), strategy)
    if kind == "replicate":
      return NamedSharding(mesh, P())
    if kind == "fsdp":
      return NamedSharding(mesh, _fsdp_spec(shape, fsdp_size, min_size))
    raise UserError(f"sharding rule kind {kind!r} for {name} is not one of: {', '.join(STRATEGIES)}")

  return jax.tree_util.tree_map_with_path(one, abstract_tree)


def batch_sharding(mesh):
  """Leading (example) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_axes(mesh):
  """The axes of `mesh` that a batch is split over (those of BATCH_AXES it has)."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_devices(mesh):
  """How many parts a batch is split into."""
  return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def split_rows(fn, mesh):
  """`fn(shared, rows)` with `rows` [N, ...] divided over the batch axes (N a multiple of
  `batch_devices`): each device runs `fn` on its share of the rows (`shared` replicated), and the
  [N, ...] result is all-gathered, replicated. Traced under jit.
  """
  axes = batch_axes(mesh)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(axes)), out_specs=P(axes))
  return lambda shared, rows: jax.lax.with_sharding_constraint(mapped(shared, rows), replicated(mesh))


def global_batch(local_batch, mesh, replicated_keys=()):
  """Process-local numpy batch -> global jax.Arrays (leading axis sharded over the mesh).

  Every host passes its own slice [global_batch / process_count, ...]; keys in `replicated_keys`
  hold identical, host-independent values (e.g. per-step negative-sampling tables) and become
  replicated arrays.
  """
  data = batch_sharding(mesh)
  repl = replicated(mesh)
  out = {}
  for key, value in local_batch.items():
    if isinstance(value, jax.Array):  # Already global (`zsl_jax.data.device_prefetch`).
      out[key] = value
      continue
    value = np.asarray(value)
    if key in replicated_keys:
      out[key] = jax.make_array_from_process_local_data(repl, value, value.shape)
    else:
      n_shards = mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count()
      if value.shape[0] % max(n_shards, 1):
        raise UserError(f"batch key {key!r}: local batch {value.shape[0]} is not divisible by the "
                        f"{n_shards} local devices; choose a global batch size divisible by "
                        f"{mesh.devices.size}")
      out[key] = jax.make_array_from_process_local_data(data, value)
  return out
