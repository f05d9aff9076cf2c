r"""Evaluation of a pretrained encoder from the command line: linear
evaluation, semi-supervised fine-tuning and weighted kNN
(byol_jax.evaluation.protocols):

  python -m byol_jax.evaluate --mode=linear --checkpoint=WORKDIR \
      --config=configs/linear_eval_fashion_mnist.py
  python -m byol_jax.evaluate --mode=finetune --checkpoint=WORKDIR \
      --config=configs/finetune_fashion_mnist.py:percent=10
  python -m byol_jax.evaluate --mode=knn --checkpoint=WORKDIR

Each run reads the checkpoint without writing to it, trains in
WORKDIR/eval/<name>/ (its metrics and checkpoints: killed or preempted, the
same command resumes it) and writes WORKDIR/results/<name>.json (metric
values, checkpoint step, both configs); earlier results are never
overwritten.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from byol_jax import cli, console, validation
from byol_jax.evaluation import protocols

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when the command runs, so importing this module (tests,
  notebooks, the other commands) adds no flags."""
  flags.DEFINE_enum('mode', None, list(validation.EVAL_MODES),
                    'The protocol to run.')
  flags.DEFINE_string(
      'checkpoint', None, 'A pretraining --workdir, its checkpoints/ '
      'directory, one step directory (default: the latest step), or an '
      'official BYOL .pkl file (results go next to it).')
  config_flags.DEFINE_config_file(
      'config', None, 'Evaluation config (configs/linear_eval_*.py, '
      'configs/finetune_*.py); optional for --mode=knn.', lock_config=True)
  flags.DEFINE_bool(
      'random_init', False, 'Evaluate the checkpoint\'s network at the '
      'initialisation its pretraining started from (the baseline).')
  flags.mark_flags_as_required(['mode', 'checkpoint'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup()
  record = protocols.run(FLAGS.config, FLAGS.mode, FLAGS.checkpoint,
                         FLAGS.random_init)
  if jax.process_index() == 0:
    metrics = ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else
                        f'{k} {v}' for k, v in record['metrics'].items())
    what = ('random init' if record['random_init'] else
            f'step {record["checkpoint_step"]}')
    print(f'{record["mode"]} evaluation of {what} on '
          f'{record["dataset"]}: {metrics}\nwritten to {record["path"]}')


def run_cli():
  """Console-script entry point (`byol-jax-evaluate`)."""
  _define_flags()
  console.run(main, sys.modules[__name__])


if __name__ == '__main__':
  run_cli()
