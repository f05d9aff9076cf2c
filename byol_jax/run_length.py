"""Run length: epochs to steps the way the official code counts them.

Pretraining, linear evaluation and fine-tuning all take their step counts
from here (byol/configs/byol.py: num_steps = epochs * num_examples //
batch_size).
"""

from __future__ import annotations

import fractions


def steps_per_epoch(config, num_train_examples: int) -> int:
  """Whole batches per epoch: the epoch boundaries of logging and periodic
  evaluations (run lengths use `epochs_to_steps`)."""
  return max(num_train_examples // config.batch_size, 1)


def epochs_to_steps(epochs: float, num_train_examples: int,
                    batch_size: int) -> int:
  """The official run length: epochs * num_examples // batch_size
  (byol/configs/byol.py: 1000 ImageNet epochs at batch 4096 are 312,784
  steps, 10 warm-up epochs 3,127). Fractional epochs are allowed; they are
  read as the decimal written (3.628, not its binary float), so the count
  never depends on float rounding."""
  exact = fractions.Fraction(repr(float(epochs))) * num_train_examples
  return int(exact // batch_size)


def total_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(epochs_to_steps(config.num_epochs, num_train_examples,
                             config.batch_size), 1)


def warmup_steps(config, num_train_examples: int) -> int:
  return epochs_to_steps(config.optimizer.warmup_epochs, num_train_examples,
                         config.batch_size)
