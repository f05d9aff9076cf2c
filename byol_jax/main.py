"""Command line: pretrain BYOL / SimSiam as a config file says.

  python -m byol_jax.main --config=configs/byol_fashion_mnist.py \
      --workdir=runs/fmnist [--config.batch_size=128 ...]
"""

from absl import app, flags, logging
from ml_collections import config_flags

from byol_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (see configs/).', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics and results; a run '
    'pointed at a workdir with a checkpoint resumes from it.')
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
  logging.info('Config:\n%s', _CONFIG.value)
  result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(train.summary_table(result))


def run():
  """Console-script entry point (`byol-jax-train`)."""
  app.run(main)


if __name__ == '__main__':
  run()
