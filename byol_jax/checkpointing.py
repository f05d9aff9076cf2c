"""Checkpoints of the whole TrainState with orbax.

Layout: <workdir>/checkpoints/<step>/{state, config}. Saving is periodic and
keeps the last N; `restore_latest` resumes a run from its workdir. The
config is stored beside the state so that evaluation and export rebuild the
same network, and a checkpoint written for another model is refused with a
message instead of being overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import weakref
from typing import Any, Iterator, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
import tensorflow as tf
from etils import epath

from byol_jax import config_lib, console

# Config fields that define the shapes of the saved pytree.
_SHAPE_FIELDS = ('model', 'dataset.num_classes', 'dataset.num_channels',
                 'target.use', 'optimizer.name',
                 'optimizer.fixed_predictor_lr',
                 'optimizer.predictor_lr_multiplier', 'optimizer.lars_order')
# Model fields that change how, not what, is computed: free to differ.
_NOT_SHAPE = ('model.conv_impl',)
# What to do about a difference, where there is more to say.
_HINTS = {
    'optimizer.lars_order': (
        "A checkpoint with lars_order 'optax' was written with optax.lars's "
        'update order (byol_jax before the official LARS order became the '
        'default); resume it with --config.optimizer.lars_order=optax.'),
}


class CheckpointMismatchError(console.UserError, ValueError):
  """The workdir holds a checkpoint of a different model or optimizer."""


class CheckpointCorruptError(console.UserError, RuntimeError):
  """The workdir's latest checkpoint cannot be read."""


class WorkdirError(console.UserError, ValueError):
  """The workdir cannot hold a run (a file, read-only, empty path)."""


class DiskFullError(console.UserError, OSError):
  """A checkpoint could not be written for lack of space."""


class WorkdirBusyError(console.UserError, RuntimeError):
  """Another live run holds the workdir."""


def check_workdir(workdir: str) -> None:
  """Refuses, before anything is read or compiled, a workdir a run could not
  finish in: empty, a file, a part (checkpoints/, results/, eval/,
  tensorboard/, metrics.jsonl) of the wrong kind, or not writable. Local
  paths only; an object store reports its own errors."""
  if not workdir:
    raise WorkdirError('--workdir is empty; give the run a directory.')
  if '://' in workdir:
    return
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir={workdir} is a file, not a directory.')
  parts = {'checkpoints': True, 'checkpoint_checksums': True,
           'results': True, 'eval': True, 'tensorboard': True,
           'metrics.jsonl': False}
  for name, is_dir in parts.items():
    path = os.path.join(workdir, name)
    if os.path.lexists(path) and os.path.isdir(path) != is_dir:
      raise WorkdirError(
          f'{path} should be a {"directory" if is_dir else "file"} but is '
          f'not; move it away (nothing was changed).')
  existing = workdir
  while not os.path.exists(existing):
    existing = os.path.dirname(os.path.abspath(existing))
  for path in [existing] + [os.path.join(workdir, n) for n in parts]:
    # No write bit at all counts as read-only for root too (who could write).
    if os.path.exists(path) and (not os.access(path, os.W_OK)
                                 or not os.stat(path).st_mode & 0o222):
      raise WorkdirError(f'{path} is not writable; the run could not save '
                         'its checkpoints or results there (nothing was '
                         'changed).')


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
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  try:
    with _lock(workdir):
      yield
  except BaseException:
    # A run that failed before writing anything leaves no empty workdir.
    if created and set(os.listdir(workdir)) <= {'.lock', LOG_FILE}:
      shutil.rmtree(workdir, ignore_errors=True)
    raise


# The run's log, beside its checkpoints (process 0; appended on resume).
LOG_FILE = 'log.txt'


@contextlib.contextmanager
def _lock(workdir: str) -> Iterator[None]:
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
  """Saves `state` at its step with the config that produced it (async);
  first records the checksums of the saves already final."""
  step = int(jax.device_get(state.step))
  finish(manager)
  with _disk_full_is_a_message(manager, step):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config.to_dict())), force=True)
  _PENDING[manager] = step


# The step each manager was last asked to save, until `finish` sees it final.
_PENDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class CheckpointWriteError(console.UserError, OSError):
  """A save ended without its step becoming a checkpoint."""


def _mentions_full_disk(error: BaseException) -> bool:
  """ENOSPC or tensorstore's RESOURCE_EXHAUSTED anywhere in the exception's
  graph: orbax re-raises its writers' errors wrapped, chained or grouped."""
  seen, todo = set(), [error]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    text = f'{type(e).__name__}: {e}'
    if (getattr(e, 'errno', None) == errno.ENOSPC
        or 'RESOURCE_EXHAUSTED' in text or 'No space left' in text):
      return True
    todo += [e.__cause__, e.__context__, *getattr(e, 'exceptions', ())]
  return False


def _settle(manager) -> None:
  """Lets orbax's background writers end (each logs its own failure) so
  that the run's own message is the last thing it prints."""
  with contextlib.suppress(Exception):
    manager.wait_until_finished()
  with contextlib.suppress(Exception):
    manager.close()
  deadline = time.monotonic() + 30
  for thread in threading.enumerate():
    if type(thread).__module__.startswith('orbax'):
      with contextlib.suppress(Exception):  # orbax's join re-raises.
        thread.join(max(0.0, deadline - time.monotonic()))
  gc.collect()  # asyncio logs its failed tasks when they are collected.


@contextlib.contextmanager
def _disk_full_is_a_message(manager, step: Optional[int]):
  """A full disk (ENOSPC; RESOURCE_EXHAUSTED from tensorstore) ends the run
  with what happened and what is safe, instead of a raw traceback."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not _mentions_full_disk(e):
      raise
    step = _PENDING.pop(manager, step)
    _settle(manager)
    which = f'of step {step} ' if step is not None else ''
    with contextlib.suppress(Exception):
      manager.reload()
    kept = sorted(manager.all_steps())
    raise DiskFullError(
        f'The disk holding {manager.directory} is full: the checkpoint '
        f'{which}could not be written. The earlier checkpoints '
        f'({", ".join(map(str, kept)) or "none"}) are intact. Free some '
        'space and run the same command to resume.') from None


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the pending save, checks that its step became final, then
  records a checksum of every final step that has none (process 0; orbax
  itself has no content check)."""
  with _disk_full_is_a_message(manager, None):
    manager.wait_until_finished()
    step = _PENDING.pop(manager, None)
    if step is not None:
      manager.reload()  # Re-listed only when a save was pending.
      if step not in manager.all_steps():
        raise CheckpointWriteError(
            f'The checkpoint of step {step} was not written to '
            f'{manager.directory} (orbax reported no error). The earlier '
            'checkpoints ('
            f'{", ".join(map(str, manager.all_steps())) or "none"}) are '
            'intact; run the same command to resume from the latest.')
    if jax.process_index() == 0:
      _record_checksums(manager)


def _record_checksums(manager) -> None:
  steps = set(manager.all_steps())
  records = _checksum_dir(manager)
  tf.io.gfile.makedirs(records)
  for name in tf.io.gfile.listdir(records):
    if name.endswith('.json') and name[:-5].isdigit() and int(
        name[:-5]) not in steps:
      tf.io.gfile.remove(os.path.join(records, name))  # Pruned by max_to_keep.
  for step in steps:
    path = os.path.join(records, f'{step}.json')
    if not tf.io.gfile.exists(path):
      tmp = path + '.tmp'
      with tf.io.gfile.GFile(tmp, 'w') as f:
        json.dump(_digest(manager, step), f, indent=1, sort_keys=True)
      tf.io.gfile.rename(tmp, path, overwrite=True)


def _checksum_dir(manager) -> str:
  """<workdir>/checkpoint_checksums, beside orbax's checkpoints/."""
  return os.path.join(os.path.dirname(str(manager.directory).rstrip('/')),
                      'checkpoint_checksums')


def _digest(manager, step: int) -> dict[str, str]:
  """sha256 of every file of a step's directory, by relative path."""
  root = os.path.join(str(manager.directory), str(step))
  out = {}
  for dirpath, _, files in tf.io.gfile.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      h = hashlib.sha256()
      with tf.io.gfile.GFile(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
          h.update(block)
      out[os.path.relpath(path, root)] = h.hexdigest()
  return out


def _verify(manager, step: int) -> None:
  """Refuses a step whose files differ from the checksums recorded when its
  save was final (a flipped byte would otherwise resume silently). Steps
  saved before checksums existed, or killed before recording, pass."""
  path = os.path.join(_checksum_dir(manager), f'{step}.json')
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path) as f:
    want = json.load(f)
  have = _digest(manager, step)
  changed = sorted(k for k in set(want) | set(have)
                   if want.get(k) != have.get(k))
  if changed:
    raise CheckpointCorruptError(
        f'Could not read the checkpoint of step {step} in {manager.directory}: '
        f'{len(changed)} of its files differ from the checksums recorded when '
        f'it was saved ({", ".join(changed[:3])}): changed or damaged since.\n'
        'It was left untouched. Move that step directory away to resume from '
        'an earlier checkpoint, or use a new --workdir.')


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
  saved, config = config_lib.upgrade(saved_config), config_lib.upgrade(config)
  diffs = []
  hints = []
  for field in _SHAPE_FIELDS:
    old, new = _get(saved, field), _get(config, field)
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
  _verify(manager, step)
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
      directory, options=ocp.CheckpointManagerOptions(
          read_only=True, save_interval_steps=0, create=False),
      item_names=('state', 'config'),
      item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'{directory} holds no finished checkpoint.')
  _verify(manager, step)
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
