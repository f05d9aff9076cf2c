"""Devices as one named axis: the mesh, and how pytrees and batches are
placed on it.

Every mapped computation (the train step, the classifier step, feature
extraction) runs over a 1-D mesh whose axis is named `AXIS`: per-device
code under `jax.shard_map`, `lax.pmean` over AXIS, BatchNorm statistics
over the global batch. With several processes, each passes its own slice
of a global batch and the same values of replicated state.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'batch'


def make_mesh(devices=None) -> Mesh:
  """1-D mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def replicate(tree, mesh: Mesh):
  """Places a host pytree on every device of `mesh` (replicated); with
  several processes, each passes the same values for its own devices."""
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if jax.dtypes.issubdtype(getattr(x, 'dtype', None), jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
  return jax.tree.map(put, tree)


def shard_batch(batch, mesh: Mesh):
  """Assembles global arrays from this process's slice of the global batch."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def sharded(forward, mesh: Optional[Mesh]):
  """jit(forward) with each batch of images split across the mesh's devices
  along axis 0 and outputs gathered; each process passes its slice."""
  if mesh is None:
    return jax.jit(forward)
  data = NamedSharding(mesh, P(*mesh.axis_names))  # Split the batch.
  jitted = jax.jit(forward, in_shardings=(NamedSharding(mesh, P()), data),
                   out_shardings=NamedSharding(mesh, P()))

  def sharded(variables, images):
    return jitted(variables,
                  jax.make_array_from_process_local_data(data, images))
  return sharded
