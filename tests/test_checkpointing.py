"""Which config changes a saved checkpoint can and cannot be resumed with,
and what a save that did not complete says."""

import shutil

import flax
import jax.numpy as jnp
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


def test_a_checkpoint_of_optax_lars_order_is_refused_with_what_to_do():
  """LARS checkpoints written before the official update order became the
  default hold optax.lars's optimizer state (another layout, other
  updates): resuming them with the default is refused, naming the flag that
  resumes them; SGD checkpoints of that time are unaffected."""
  old = config_lib.base_config().to_dict()
  del old['optimizer']['lars_order']
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"(?s)lars_order: saved 'optax', config 'official'"
                     r'.*--config.optimizer.lars_order=optax'):
    checkpointing.check_compatible(old, config_lib.base_config(), 'DIR')
  c = config_lib.base_config()
  c.optimizer.lars_order = 'optax'
  checkpointing.check_compatible(old, c, 'DIR')
  simsiam = config_lib.simsiam_overrides(config_lib.base_config())
  checkpointing.check_compatible(simsiam.to_dict(), simsiam, 'DIR')


def test_a_workdir_the_run_could_not_finish_in_is_refused_up_front(tmp_path):
  """Checked before anything is read or compiled (a read-only results/ used
  to fail only after the whole training)."""
  checkpointing.check_workdir(str(tmp_path / 'new' / 'run'))  # Fine.
  with pytest.raises(checkpointing.WorkdirError, match='--workdir is empty'):
    checkpointing.check_workdir('')
  (tmp_path / 'file').write_text('x')
  with pytest.raises(checkpointing.WorkdirError, match='is a file'):
    checkpointing.check_workdir(str(tmp_path / 'file'))
  run = tmp_path / 'run'
  (run / 'results').mkdir(parents=True)
  (run / 'results').chmod(0o555)
  try:
    with pytest.raises(checkpointing.WorkdirError,
                       match='results is not writable'):
      checkpointing.check_workdir(str(run))
  finally:
    (run / 'results').chmod(0o755)
  (run / 'metrics.jsonl').mkdir()
  with pytest.raises(checkpointing.WorkdirError,
                     match='metrics.jsonl should be a file'):
    checkpointing.check_workdir(str(run))


def test_a_save_that_did_not_become_a_checkpoint_is_an_error(tmp_path):
  """`finish` checks the step it waited for is final: a save orbax reports
  no error for but that left no checkpoint (here its directory removed
  before the wait) would otherwise be recorded as written."""
  @flax.struct.dataclass
  class State:
    step: jnp.ndarray
    w: jnp.ndarray

  config = config_lib.base_config()
  manager = checkpointing.make_manager(str(tmp_path))
  checkpointing.save(manager, State(jnp.array(1), jnp.ones(3)), config)
  checkpointing.finish(manager)
  assert (tmp_path / 'checkpoint_checksums' / '1.json').exists()
  checkpointing.save(manager, State(jnp.array(2), jnp.ones(3)), config)
  manager.wait_until_finished()
  shutil.rmtree(tmp_path / 'checkpoints' / '2')
  manager.reload()
  with pytest.raises(checkpointing.CheckpointWriteError,
                     match=r'step 2 was not written.*checkpoints \(1\) are '
                     'intact'):
    checkpointing.finish(manager)
  checkpointing.finish(manager)  # Said once; nothing pending any more.
