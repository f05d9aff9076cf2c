"""Reads a pretrained network from either kind of file a user has: a
byol_jax pretraining checkpoint (a workdir, its checkpoints/ or one step
directory) or an official DeepMind BYOL .pkl. Never writes to it."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from byol_jax import checkpointing, config_lib, parallel


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """directory: the checkpoints directory (for an official .pkl: a
  checkpoints/ beside it, where results go); config: the pretraining
  config, upgraded (for a .pkl: the defaults with the inferred model);
  variables: the online network's {'params', 'batch_stats'}."""
  directory: str
  config: dict
  variables: dict
  step: int

  @property
  def model(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(self.config['model'])

  @property
  def encoder_variables(self) -> dict:
    return {k: self.variables[k]['encoder']
            for k in ('params', 'batch_stats')}


def load(path: str, mesh: Optional[Mesh] = None) -> Pretrained:
  """The network at `path`, replicated over `mesh` (default: on this
  process's first device)."""
  if path.endswith('.pkl'):
    from byol_jax import official_weights  # pylint: disable=g-import-not-at-top
    model, variables, step = official_weights.load(path)
    saved = config_lib.base_config()
    saved.model = model
    saved.dataset.num_classes = variables['params']['probe'][
        'kernel'].shape[1]
    if mesh is not None:
      variables = parallel.replicate(variables, mesh)
    return Pretrained(os.path.join(os.path.dirname(os.path.abspath(path)),
                                   'checkpoints'), saved.to_dict(),
                      variables, step)
  directory, _ = checkpointing.resolve(path)
  saved, variables, step = checkpointing.load_pretrained(
      path, None if mesh is None else NamedSharding(mesh, P()))
  # Written by any byol_jax version: today's fields, as that version meant.
  return Pretrained(directory, config_lib.upgrade(saved).to_dict(),
                    variables, step)
