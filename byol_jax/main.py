"""Command line: pretrain BYOL / SimSiam as a config file says.

  python -m byol_jax.main --config=configs/byol_fashion_mnist.py \
      --workdir=runs/fmnist [--config.batch_size=128 ...]

Multi-host (TPU pods, SLURM; launch/ has the scripts): add --distributed on
every process; jax.distributed.initialize() finds the cluster itself, or
takes --coordinator_address, --num_processes and --process_id.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from byol_jax import cli, console

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when the command runs, so importing this module (tests,
  notebooks, the other commands) adds no flags."""
  config_flags.DEFINE_config_file(
      'config', None, 'Path to a config file (see configs/).', lock_config=True)
  flags.DEFINE_string(
      'workdir', None, 'Directory for checkpoints, metrics and results; a run '
      'pointed at a workdir with a checkpoint resumes from it.')
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # TensorFlow and JAX load here, not at import: `--help` answers at once.
  import jax  # pylint: disable=g-import-not-at-top
  from byol_jax import train  # pylint: disable=g-import-not-at-top
  cli.setup()
  logging.info('Config:\n%s', FLAGS.config.to_json_best_effort(indent=2))
  result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(train.summary_table(result))


def run():
  """Console-script entry point (`byol-jax-train`)."""
  _define_flags()
  console.run(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
