"""Command-line pieces shared by `byol_jax.main` and `byol_jax.evaluate`:
the multi-host flags and a quieter log."""

import os
import sys
import threading

from absl import app, flags, logging

from byol_jax import console, host_memory

_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() first (every '
    'process of a multi-host run; auto-detects TPU pods and SLURM).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, where the cluster '
    'cannot be auto-detected (e.g. several processes on one machine).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Number of processes, with '
                                      '--coordinator_address.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..'
                                   'num_processes-1, with '
                                   '--coordinator_address.')
_TIMEOUT = flags.DEFINE_integer(
    'distributed_timeout_s', 300, 'How long --distributed waits for the '
    'coordinator and every other process before giving up.')


def _give_up(message: str) -> None:
  sys.stderr.write(f'Error: {message}\n')
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def setup() -> None:
  """Quiets library logs; keeps freed host memory for reuse
  (`host_memory`, before JAX's backend starts); joins the multi-host
  cluster if --distributed; turns on the persistent compilation cache on
  CPU."""
  logging.get_absl_handler().addFilter(console.QuietLibraries())
  host_memory.configure_and_log()
  if _DISTRIBUTED.value:
    _join_cluster()
  else:
    given = [f'--{f.name}' for f in (_COORDINATOR, _NUM_PROCESSES,
                                     _PROCESS_ID) if f.value is not None]
    if given:  # Otherwise the process would train alone, silently.
      raise app.UsageError(f'{", ".join(given)} need(s) --distributed.')
  compilation_cache()


def compilation_cache() -> None:
  """On CPU, JAX's persistent compilation cache in the byol_jax cache folder
  (`$BYOL_JAX_CACHE_DIR/xla`, default ~/.cache/byol_jax/xla), unless
  JAX_COMPILATION_CACHE_DIR names another or JAX_ENABLE_COMPILATION_CACHE is
  false: a resumed or repeated run loads its programs instead of compiling
  them again (benchmarks/compile_cache.py). XLA's GPU/TPU compilations are
  left as JAX configures them."""
  import jax  # pylint: disable=g-import-not-at-top
  from byol_jax import conv_autotune  # pylint: disable=g-import-not-at-top
  if (jax.config.jax_compilation_cache_dir
      or not jax.config.jax_enable_compilation_cache
      or jax.default_backend() != 'cpu'):
    return
  path = os.path.join(conv_autotune.cache_dir(), 'xla')
  jax.config.update('jax_compilation_cache_dir', path)
  logging.info('Compiled programs are cached in %s (JAX_COMPILATION_CACHE_DIR '
               'names another folder; JAX_ENABLE_COMPILATION_CACHE=false turns '
               'it off).', path)


def _join_cluster() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  where = (f'the coordinator at {_COORDINATOR.value}' if _COORDINATOR.value
           else 'the cluster (auto-detected)')
  logging.info('Joining %s as process %s of %s; waiting up to %d s for all '
               'processes (--distributed_timeout_s).', where,
               _PROCESS_ID.value, _NUM_PROCESSES.value, _TIMEOUT.value)
  # JAX's runtime aborts the process (SIGABRT, a C++ stack trace) when its
  # own deadline passes: this watchdog says what happened first, and exits.
  watchdog = threading.Timer(_TIMEOUT.value, _give_up, (
      f'--distributed: not every process joined {where} within '
      f'{_TIMEOUT.value} s (--distributed_timeout_s). Start all '
      f'{_NUM_PROCESSES.value or "N"} processes with the same '
      '--coordinator_address, each with its own --process_id.',))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value,
                               initialization_timeout=_TIMEOUT.value + 60)
  except ValueError as e:  # No cluster detected, nothing given.
    raise console.UserError(
        f'--distributed found no cluster to join ({e}). Outside TPU pods and '
        'SLURM, pass --coordinator_address=host:port --num_processes=N '
        '--process_id=i on every process.') from None
  finally:
    watchdog.cancel()
  logging.info('Process %d of %d, %d local / %d global devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
