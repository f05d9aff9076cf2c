"""Command line: pretrain BYOL / SimSiam as a config file says.

  python -m byol_jax.main --config=configs/byol_fashion_mnist.py \
      --workdir=runs/fmnist [--config.batch_size=128 ...]

Multi-host (TPU pods, SLURM; launch/ has the scripts): add --distributed on
every process; jax.distributed.initialize() finds the cluster itself, or
takes --coordinator_address, --num_processes and --process_id.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from byol_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (see configs/).', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and results; a run '
    'pointed at a workdir with a checkpoint resumes from it.')
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
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries:
  """Drops INFO chatter of orbax and XLA's backend probing from the log."""

  def filter(self, record):
    noisy = '/orbax/' in record.pathname or 'xla_bridge' in record.pathname
    return record.levelno >= 30 or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
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
  logging.info('Config:\n%s', _CONFIG.value)
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(train.summary_table(result))


def run():
  """Console-script entry point (`byol-jax-train`)."""
  app.run(main)


if __name__ == '__main__':
  run()
