"""Checkpoints of the whole TrainState with orbax.

Layout: <workdir>/checkpoints/<step>/{state, config}. Saving is periodic and
keeps the last N; `restore_latest` resumes a run from its workdir. The
config is stored beside the state so that evaluation and export rebuild the
same network, and a checkpoint written for another model is refused with a
message instead of being overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import Any, Iterator, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

# Config fields that define the shapes of the saved pytree.
_SHAPE_FIELDS = ('model', 'dataset.num_classes', 'dataset.num_channels',
                 'target.use', 'optimizer.name',
                 'optimizer.fixed_predictor_lr',
                 'optimizer.predictor_lr_multiplier', 'optimizer.lars_order')
# Model fields that change how, not what, is computed: free to differ.
_NOT_SHAPE = ('model.conv_impl',)
# What a checkpoint written before a field existed implicitly used, given
# the saved config: LARS runs then used optax.lars (the LR before the
# momentum trace: another optimizer-state layout and other updates).
_SHAPE_DEFAULTS = {
    'optimizer.predictor_lr_multiplier': lambda saved: 1.0,
    'optimizer.lars_order': lambda saved: (
        'optax' if saved.optimizer.name == 'lars' else None),
}
# What to do about a difference, where there is more to say.
_HINTS = {
    'optimizer.lars_order': (
        "A checkpoint with lars_order 'optax' was written with optax.lars's "
        'update order (byol_jax before the official LARS order became the '
        'default); resume it with --config.optimizer.lars_order=optax.'),
}


class CheckpointMismatchError(ValueError):
  """The workdir holds a checkpoint of a different model or optimizer."""


class CheckpointCorruptError(RuntimeError):
  """The workdir's latest checkpoint cannot be read."""


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


@contextlib.contextmanager
def workdir_lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive lock on <workdir>/.lock for the run's lifetime.

  A second run pointed at the same workdir would interleave checkpoints and
  metrics with the first; it is refused. The lock is an flock, which the
  kernel drops when its process dies (even by SIGKILL), so a killed run
  never leaves a stale lock behind. Local and NFS paths only: object-store
  workdirs (gs://, s3://) are not locked.
  """
  if '://' in workdir:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, '.lock')
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'unknown'
      raise WorkdirBusyError(
          f'Another run is using --workdir={workdir} ({holder}). Wait for '
          'it to finish, stop it, or choose another --workdir.') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {socket.gethostname()}\n')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _unreadable(what: str, step: int, manager, error: Exception):
  return CheckpointCorruptError(
      f'Could not read {what} {step} in {manager.directory}: '
      f'{type(error).__name__}: {str(error)[:300]}\n'
      'It was left untouched. Move that step directory away to resume from '
      'an earlier checkpoint, or use a new --workdir.')


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) \
      else config


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def make_manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      checkpoint_dir(workdir),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=('state', 'config'))


def save(manager: ocp.CheckpointManager, state, config) -> None:
  """Saves `state` at its step with the config that produced it."""
  step = int(jax.device_get(state.step))
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config.to_dict())), force=True)


def load_config(manager: ocp.CheckpointManager,
                step: Optional[int] = None) -> Optional[dict]:
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  try:
    return manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))['config']
  except Exception as e:  # orbax raises many types for unreadable files.
    raise _unreadable('the config saved with step', step, manager, e) from e


def check_compatible(saved_config: dict, config, directory: str) -> None:
  """Raises if the saved checkpoint cannot hold this config's state."""
  saved = ml_collections.ConfigDict(saved_config)
  diffs = []
  hints = []
  for field in _SHAPE_FIELDS:
    try:
      old = _get(saved, field)
    except (KeyError, AttributeError):
      old = _SHAPE_DEFAULTS.get(field, lambda saved: None)(saved)
    try:
      new = _get(config, field)
    except (KeyError, AttributeError):  # e.g. lars_order of an SGD config.
      new = None
    if field in _HINTS and _norm(old) != _norm(new):
      hints.append(_HINTS[field])
    if isinstance(old, dict) and isinstance(new, dict):
      keys = set(old) | set(new)
      diffs += [f'{field}.{k}: saved {old.get(k)!r}, config {new.get(k)!r}'
                for k in sorted(keys) if f'{field}.{k}' not in _NOT_SHAPE
                and _norm(old.get(k)) != _norm(new.get(k))]
    elif _norm(old) != _norm(new):
      diffs.append(f'{field}: saved {old!r}, config {new!r}')
  if diffs:
    raise CheckpointMismatchError(
        f'The checkpoint in {directory} was written for a different model:\n'
        + '\n'.join('  ' + d for d in diffs)
        + '\nUse a new --workdir, or the config of that run. The checkpoint '
        'was left untouched.' + ''.join('\n' + h for h in hints))


def _norm(v):
  return list(v) if isinstance(v, tuple) else v


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: Optional[int] = None):
  """Restores the state at `step` (default: latest) into `abstract_state`'s
  structure and shardings."""
  step = manager.latest_step() if step is None else step
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
  except Exception as e:  # orbax/tensorstore raise many types here.
    raise _unreadable('the checkpoint of step', step, manager, e) from e
  return restored['state']


def resolve(path: str) -> tuple[str, Optional[int]]:
  """(checkpoints directory, step or None for the latest) from a run's
  workdir, its checkpoints/ directory, or one step's directory in it.
  Local paths and object stores (gs://...) alike."""
  p = epath.Path(path.rstrip('/'))
  if '://' not in path:
    p = epath.Path(os.path.abspath(p))
  if (p / 'checkpoints').is_dir():
    return str(p / 'checkpoints'), None
  if p.name.isdigit() and (p / 'state').is_dir():
    return str(p.parent), int(p.name)
  if p.is_dir() and any(c.name.isdigit() for c in p.iterdir()):
    return str(p), None
  raise FileNotFoundError(
      f'No checkpoint at {path}: pass a pretraining --workdir, its '
      'checkpoints/ directory, or one step directory such as '
      'WORKDIR/checkpoints/1000.')


def load_pretrained(path: str, sharding: Optional[jax.sharding.Sharding]
                    = None) -> tuple[dict, dict, int]:
  """Reads a pretraining checkpoint for evaluation, without writing to it.

  Returns (the config it was trained with, the online network's variables
  {'params', 'batch_stats'}, its step). Arrays are placed with `sharding`
  (e.g. replicated over a mesh; default: this process's first device), so
  any device topology can read what any other wrote.
  """
  directory, step = resolve(path)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_names=('state', 'config'),
      item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'{directory} holds no finished checkpoint.')
  config = load_config(manager, step)
  sharding = sharding or jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0])
  try:
    metadata = manager.item_metadata(step)['state']
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
        metadata, is_leaf=lambda m: hasattr(m, 'shape')
        and hasattr(m, 'dtype'))
    # Only the online network: the optimizer state and target stay on disk.
    wanted = {k: abstract[k] for k in ('online_params', 'online_batch_stats')}
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(
                wanted), partial_restore=True)))['state']
  except Exception as e:  # orbax/tensorstore raise many types here.
    raise _unreadable('the checkpoint of step', step, manager, e) from e
  return config, {'params': state['online_params'],
                  'batch_stats': state['online_batch_stats']}, step
