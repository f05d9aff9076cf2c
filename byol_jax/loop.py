"""The training loop every protocol runs: pretraining, linear evaluation and
fine-tuning (as DeepMind's BYOL code runs both through one loop).

`fit` runs a jitted step from the state's step to `num_steps` and owns what
happens between steps: interval metrics and the NaN stop, throughput and
ETA, periodic actions, periodic checkpoints, and SIGTERM / SIGINT (turned
into a checkpoint and exit code 128 + signal by `StopRequest`). Resuming is
the caller restoring the state first: `fit` starts from `state.step`.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from byol_jax import checkpointing, console, metric_writer, run_length

# Bounds the dispatched-but-unfinished steps (and their batches in memory):
# thousands of tiny fast-path classifier steps would otherwise queue up.
_MAX_STEPS_AHEAD = 32


class NonFiniteLossError(console.UserError, FloatingPointError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


class StopRequest:
  """Records SIGTERM / SIGINT (preemption, Ctrl-C) instead of dying: the loop
  checkpoints at the next step and `raise_if_stopped` ends the run."""

  def __init__(self):
    self.signal = None
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signum

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)

  def raise_if_stopped(self, step: int) -> None:
    if self.signal:
      logging.warning('Stopped by signal %d at step %d; checkpoint saved. Run '
                      'the same command to resume.', self.signal, step)
      raise SystemExit(128 + self.signal)


def every(steps: int = 0, epochs: float = 0.0, num_examples: int = 0,
          batch_size: int = 1) -> int:
  """A period in steps: `steps` if set, else `epochs` converted as the run
  length is (run_length.epochs_to_steps), so that a period of whole epochs
  ends on the last step of a run of whole epochs (that evaluation is the
  final one, not a second one a few steps before it); 0 means never."""
  return steps or run_length.epochs_to_steps(epochs, num_examples, batch_size)


def due(step: int, period: int) -> bool:
  """Whether an action every `period` steps (0: never) runs after `step`."""
  return period > 0 and step % period == 0


@dataclasses.dataclass(frozen=True)
class Periodic:
  """`action(state, step)` after every `period` steps but the last (whose
  state the caller evaluates anyway); returns scalars to write, or None."""
  period: int
  action: Callable[[Any, int], Optional[Mapping[str, float]]]
  name: str


def format_time(seconds: float) -> str:
  if not np.isfinite(seconds):  # No rate yet (the first step after resume).
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


def fit(state, step_fn: Callable, batches: Iterator, *, num_steps: int,
        stop: StopRequest, writer: metric_writer.MetricWriter,
        manager: Optional[ocp.CheckpointManager], config,
        batch_size: int, steps_per_epoch: int, log_every: int,
        checkpoint_every: int = 0, periodic: Sequence[Periodic] = (),
        describe: Callable[[Mapping[str, float]], str] = lambda s: '',
        on_summary: Optional[
            Callable[[int, Mapping[str, float]], None]] = None,
        name: str = 'step', profile_dir: Optional[str] = None,
        profile_steps: int = 0, sampled_metrics: Sequence[str] = ()):
  """Runs `state, metrics = step_fn(state, batch)` from state.step to
  `num_steps`; returns (state, step): the last step, saved and final.

  Every `log_every` steps (and at checkpoint steps, the last step and a
  stop), the mean of the interval's metrics (`sampled_metrics`: over the
  steps that computed them, see `metric_writer.mean_metrics`) is checked
  for NaN, written
  with `epoch` and `images_per_second` (training time only: periodic
  actions and saves excluded, as the ETA), and logged as
  `name step/num_steps | describe(summary) | img/s | ETA`. Of the
  `periodic` actions due at a step, the first runs (list the one that does
  more first). Checkpoints (`manager`, with `config`) every
  `checkpoint_every` steps and at the end, once per step; a stop signal
  ends the loop after the next step's save; the caller then calls
  `stop.raise_if_stopped`. With `profile_steps`, a jax.profiler trace of
  that many steps after two warm-up steps goes to `profile_dir`.
  """
  step = int(jax.device_get(state.step))
  start_step = step
  saved_step = manager.latest_step() if manager is not None else None
  pending, timed_from, excluded = [], None, 0.0
  started = time.time()
  profile = _Profile(profile_dir, start_step + 2, profile_steps)
  while step < num_steps:
    state, metrics = step_fn(state, next(batches))
    pending.append(metrics)
    step += 1
    profile.after(step, metrics)
    if step == start_step + 1:  # Time from after the compile.
      jax.block_until_ready(metrics)
      timed_from = (time.time(), step)
      logging.info('%s %d (with the compilation) took %.1f s.', name, step,
                   timed_from[0] - started)
    elif len(pending) % _MAX_STEPS_AHEAD == 0:
      jax.block_until_ready(metrics)
    last = step == num_steps
    save_now = (manager is not None and due(step, checkpoint_every)
                and not last)
    # Checkpoint steps are logging steps too: the NaN check below runs
    # before any state is written.
    if due(step, log_every) or last or save_now or stop.signal:
      summary = metric_writer.mean_metrics(pending, sampled_metrics)
      pending = []
      if not np.isfinite(summary['loss']):
        good = manager.latest_step() if manager is not None else None
        raise NonFiniteLossError(
            f'Loss is {summary["loss"]} at {name} {step} (mean since the '
            'previous log line); stopping. ' + (
                f'The last good checkpoint (step {good}) is untouched.'
                if good is not None else 'No checkpoint was written yet.')
            + ' Lower the learning rate (--config.optimizer.base_lr) or '
            'check the data.')
      now = time.time()
      rate = (step - timed_from[1]) / max(now - timed_from[0] - excluded,
                                          1e-9)
      summary['images_per_second'] = rate * batch_size
      summary['epoch'] = step / steps_per_epoch
      eta = (num_steps - step) / rate if rate > 0 else float('nan')
      writer.write(step, summary)
      logging.info('%s %d/%d | %s | %.0f img/s | ETA %s', name, step,
                   num_steps, describe(summary),
                   summary['images_per_second'], format_time(eta))
      if on_summary is not None:
        on_summary(step, summary)
    t = time.time()
    if save_now:
      writer.flush()  # The records up to a checkpoint are on disk with it.
      checkpointing.save(manager, state, config)
      saved_step = step
    if not last:
      for p in periodic:
        if due(step, p.period):
          out = p.action(state, step)
          if out:
            writer.write(step, out)
          break
    excluded += time.time() - t
    if stop.signal:
      break
  profile.stop(step)
  writer.flush()
  if manager is not None:
    if saved_step != step:  # Once per step (a periodic save may have run).
      checkpointing.save(manager, state, config)
    checkpointing.finish(manager)
  return state, step


class _Profile:
  """A jax.profiler trace of steps first+1 .. first+n (after the compile
  and a warm-up step), for TensorBoard's Profile tab or Perfetto."""

  def __init__(self, directory: Optional[str], first: int, n: int):
    self.directory, self.first, self.n = directory, first, n
    self.active = False

  def after(self, step: int, metrics) -> None:
    if self.n and step == self.first:
      jax.block_until_ready(metrics)
      jax.profiler.start_trace(self.directory)
      self.active = True
    elif self.active and step == self.first + self.n:
      jax.block_until_ready(metrics)
      self.stop(step)

  def stop(self, step: int) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      logging.info('Profile of steps %d-%d written to %s: open it with '
                   'TensorBoard (--logdir=%s, Profile tab) or at '
                   'https://ui.perfetto.dev.', self.first + 1, step,
                   self.directory, self.directory)
