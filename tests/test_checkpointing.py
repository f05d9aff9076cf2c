"""Which config changes a saved checkpoint can and cannot be resumed with."""

import pytest

from byol_jax import checkpointing, config_lib


def test_resume_allows_how_refuses_what():
  saved = config_lib.base_config()
  # conv_impl changes how the convolutions run, not the parameters.
  c = config_lib.base_config()
  c.model.conv_impl = 'matmul'
  checkpointing.check_compatible(saved.to_dict(), c, 'DIR')
  # A predictor LR multiplier splits the optimizer state in two.
  c.optimizer.predictor_lr_multiplier = 10.0
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='predictor_lr_multiplier: saved 1.0, config 10.0'):
    checkpointing.check_compatible(saved.to_dict(), c, 'DIR')
  # A checkpoint from before the field existed used multiplier 1.
  old = saved.to_dict()
  del old['optimizer']['predictor_lr_multiplier']
  checkpointing.check_compatible(old, config_lib.base_config(), 'DIR')
  c = config_lib.base_config()
  c.model.width = 2.0
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match='model.width: saved 1.0, config 2.0'):
    checkpointing.check_compatible(saved.to_dict(), c, 'DIR')
