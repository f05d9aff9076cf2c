"""Command-line pieces shared by `byol_jax.main` and `byol_jax.evaluate`:
the multi-host flags and a quieter log."""

from absl import app, flags, logging

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


class _QuietLibraries:
  """Drops INFO chatter of orbax and XLA's backend probing from the log."""

  def filter(self, record):
    noisy = '/orbax/' in record.pathname or 'xla_bridge' in record.pathname
    return record.levelno >= 30 or not noisy


def setup() -> None:
  """Quiets library logs; joins the multi-host cluster if --distributed."""
  import jax  # pylint: disable=g-import-not-at-top
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
    logging.info('Process %d of %d, %d local / %d global devices.',
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
  elif _COORDINATOR.value:
    raise app.UsageError('--coordinator_address needs --distributed.')
