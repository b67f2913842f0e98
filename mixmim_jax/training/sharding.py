"""All device placement lives here: the mesh, parameter partitioning rules and
the batch layout. Model code has no device logic.

Batch: the leading axis is split over ('data', 'fsdp'), contiguous per device,
so each device's images form whole mask groups and MixMIM's pairs never cross
devices. Parameters: with fsdp > 1 each large tensor is split over 'fsdp' on
its largest divisible axis; with model > 1 the MLP and qkv kernels are split
over 'model' (Megatron-style: output dim of fc1/qkv, input dim of fc2/proj).
Activations: model code may name an axis "batch" (nn.with_logical_constraint);
the steps are traced under `activation_rules`, which maps it to the batch axes.
"""
from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
# Tensors smaller than this stay replicated under FSDP: gathering them costs more
# latency than their memory is worth.
FSDP_MIN_SIZE = 2 ** 14
_MODEL_OUT = ("qkv", "fc1")
_MODEL_IN = ("proj", "fc2")


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """{axis: size} for `num_devices` devices from a config's mesh section, where
  one axis may be -1 (the devices left over)."""
  sizes = {a: int(mesh_config[a]) for a in MESH_AXES}
  free = [a for a in MESH_AXES if sizes[a] == -1]
  if len(free) > 1:
    raise ValueError(f"mesh {sizes}: at most one axis may be -1.")
  fixed = 1
  for a in MESH_AXES:
    if sizes[a] != -1:
      if sizes[a] < 1:
        raise ValueError(f"mesh.{a}={sizes[a]}; expected a positive size or -1.")
      fixed *= sizes[a]
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {sizes} does not fit {num_devices} devices: the fixed axes "
                       f"({fixed}) do not divide the device count.")
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"mesh {sizes} has {fixed} devices but {num_devices} are available; "
                     "set one axis to -1 or make the product match.")
  return sizes


def make_mesh(mesh_config, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # pylint: disable=broad-except
    # Fake CPU devices and odd shapes: fall back to device order.
    grid = np.asarray(devices).reshape(shape)
  # Auto axes: let XLA propagate shardings (jax.make_mesh defaults to Explicit).
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


# Logical activation axes (named by model code with nn.with_logical_constraint)
# -> mesh axes. Outside `activation_rules` such constraints do nothing.
ACTIVATION_RULES = (("batch", BATCH_AXES),)


@contextlib.contextmanager
def activation_rules(mesh: Mesh):
  """Trace model code inside this to pin its named activation axes to `mesh`."""
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
      nn.logical_axis_rules(ACTIVATION_RULES):
    yield


def under_activation_rules(fn, mesh: Mesh):
  """`fn`, traced inside `activation_rules(mesh)`: wrap a step with it before jit."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activation_rules(mesh):
      return fn(*args, **kwargs)
  return wrapped


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(path: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
  """PartitionSpec for one parameter (or optimizer moment) of `shape`."""
  fsdp, model = mesh.shape["fsdp"], mesh.shape["model"]
  spec = [None] * len(shape)
  module = path[-2] if len(path) >= 2 else ""
  if model > 1 and len(shape) == 2 and path[-1] == "kernel":
    axis = 1 if module in _MODEL_OUT else 0 if module in _MODEL_IN else None
    if axis is not None and shape[axis] % model == 0:
      spec[axis] = "model"
  if fsdp > 1 and int(np.prod(shape)) >= FSDP_MIN_SIZE:
    free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % fsdp == 0]
    if free:
      spec[max(free, key=lambda i: shape[i])] = "fsdp"
  return P(*spec)


def tree_shardings(tree, mesh: Mesh):
  """NamedShardings for a pytree of arrays / ShapeDtypeStructs (params or optimizer
  state, whose moments mirror the params and get the same rule)."""
  def one(path, leaf):
    keys = tuple(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
    shape = tuple(getattr(leaf, "shape", ()))
    if not shape:
      return replicated(mesh)
    return NamedSharding(mesh, param_spec(keys, shape, mesh))
  return jax.tree_util.tree_map_with_path(one, tree)
