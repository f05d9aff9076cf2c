"""The pretraining loop: config -> data -> step -> metrics / checkpoints.

Side effects live here only; the math is in losses, optim and train_step.
"""

from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
from absl import logging

from byol_jax import (checkpointing, config_lib, console, diagnostics,
                      evaluate, input_pipeline, metric_writer, networks,
                      optim, train_step)


class NonFiniteLossError(console.UserError, FloatingPointError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


def _format_time(seconds: float) -> str:
  if not np.isfinite(seconds):  # No rate yet (the first step after resume).
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


class _StopRequest:
  """Turns SIGTERM / SIGINT (preemption, Ctrl-C) into a checkpoint and exit."""

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


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Pretrains as `config` says, checkpoints into `workdir`, returns the final
  evaluation (weighted-kNN and probe accuracy, plus baselines if asked).

  Refuses (checkpointing.WorkdirBusyError) while another run holds the
  workdir; process 0 holds the lock for all processes of a multi-host run.
  """
  config_lib.validate(config, jax.device_count(), jax.process_count())
  config_lib.check_same_across_processes(config)
  checkpointing.check_workdir(workdir)
  if jax.process_index() != 0:
    return _train_and_evaluate(config, workdir)
  with checkpointing.workdir_lock(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict[str, float]:
  start_time = time.time()
  d = config.dataset
  train_source = input_pipeline.load_source(d, d.train_split)
  eval_source = input_pipeline.load_source(d, d.eval_split)
  config_lib.validate_data(
      d, input_pipeline.num_channels(train_source),
      max(map(input_pipeline.label_classes, (train_source, eval_source))))
  config_lib.validate_schedule(config, len(train_source))

  num_steps = config_lib.total_steps(config, len(train_source))
  steps_per_epoch = config_lib.steps_per_epoch(config, len(train_source))
  peak_lr = optim.scaled_learning_rate(config.optimizer.base_lr,
                                       config.batch_size,
                                       config.optimizer.lr_scaling)
  lr_schedule = optim.learning_rate_schedule(
      peak_lr, num_steps, config_lib.warmup_steps(config, len(train_source)))
  tau_schedule = optim.tau_schedule(config.target.tau_base, num_steps,
                                    config.target.schedule)
  network = networks.build_network(config.model, d.num_classes,
                                   bn_axis_name=train_step.AXIS)
  optimizer = optim.with_probe_optimizer(
      optim.build_optimizer(config.optimizer, lr_schedule, peak_lr),
      config.probe)
  mesh = train_step.make_mesh()
  image_shape = (d.image_size, d.image_size, d.num_channels)

  manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
  state = train_step.init_state(
      jax.random.key(config.seed), network, optimizer, image_shape,
      use_target=config.target.use, target_init=config.target.init)
  # A host copy: the train step donates (deletes) the state's buffers.
  init_variables = jax.device_get(_online_variables(state))
  state = train_step.replicate(state, mesh)
  if manager.latest_step() is not None:
    checkpointing.check_compatible(checkpointing.load_config(manager), config,
                                   checkpointing.checkpoint_dir(workdir))
    state = checkpointing.restore(manager, state)
    logging.info('Resumed from step %d in %s', int(state.step), workdir)
  start_step = int(jax.device_get(state.step))

  evaluator = evaluate.KnnEvaluator(config, network, mesh, train_source, eval_source)
  # Records past the restored step were of steps this run does again.
  writer = metric_writer.MetricWriter(workdir, resume_step=start_step)
  baselines = {}
  if config.eval.baselines:
    baselines.update(evaluator.raw_pixels())
    baselines.update({k.replace('eval/', 'random_init/'): v for k, v in
                      evaluator(init_variables).items() if 'knn' in k})
    logging.info('Baselines: %s', _fmt(baselines))

  on_device = config.augment.get('on_device', False)
  view1, view2 = config.augment.view1.to_dict(), config.augment.view2.to_dict()
  data = input_pipeline.pretrain_dataset(
      train_source, global_batch=config.batch_size, seed=config.seed,
      image_size=d.image_size, view1=view1, view2=view2, mean=d.mean,
      std=d.std,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(), crop_only=on_device)
  batches = data.as_numpy_iterator()
  device_views = None
  if on_device:
    device_views = dict(view1=view1, view2=view2, mean=tuple(d.mean),
                        std=tuple(d.std))
  step_fn = train_step.make_train_step(
      mesh, network=network, optimizer=optimizer, lr_schedule=lr_schedule,
      tau_schedule=tau_schedule, loss_config=config.loss,
      device_views=device_views)
  rng = train_step.replicate(jax.random.key(config.seed + 1), mesh)
  # Fractional epochs (e.g. 0.5) are allowed; rounded to whole steps.
  knn_every = config.eval.get('knn_every_steps', 0) or int(round(
      config.eval.knn_every_epochs * steps_per_epoch))
  probe_every = int(round(config.eval.get('probe_every_epochs', 0)
                          * steps_per_epoch))

  logging.info('Training %d steps (%d per epoch), global batch %d on %d '
               'devices, from step %d.', num_steps, steps_per_epoch,
               config.batch_size, jax.device_count(), start_step)
  pending, timed_from = [], None
  step = start_step
  saved_step = manager.latest_step()
  # SIGTERM / SIGINT anywhere below, the final save and evaluation included,
  # end in a durable checkpoint and exit code 128 + signal.
  with _StopRequest() as stop:
    while step < num_steps:
      batch = train_step.shard_batch(next(batches), mesh)
      state, metrics = step_fn(state, batch, rng)
      pending.append(metrics)
      step += 1
      if step == start_step + 1:  # Time from after the compile.
        jax.block_until_ready(metrics)
        timed_from = (time.time(), step)
      last = step == num_steps
      save_now = bool(config.checkpoint_every_steps) and (
          step % config.checkpoint_every_steps == 0) and not last
      # Checkpoint steps are logging steps too: the NaN check below runs
      # before any state is written.
      if (step % config.log_every_steps == 0 or last or save_now
          or stop.signal):
        summary = metric_writer.mean_metrics(pending)
        pending = []
        if not np.isfinite(summary['loss']):
          good = manager.latest_step()
          raise NonFiniteLossError(
              f'Loss is {summary["loss"]} at step {step} (mean since the '
              'previous log line); stopping. ' + (
                  f'The last good checkpoint (step {good}) is untouched.'
                  if good is not None else 'No checkpoint was written yet.'))
        now = time.time()
        rate = (step - timed_from[1]) / max(now - timed_from[0], 1e-9)
        summary['images_per_second'] = rate * config.batch_size
        eta = (num_steps - step) / rate if rate > 0 else float('nan')
        writer.write(step, summary)
        logging.info('step %d/%d | loss %.4f | probe %.3f | std %.4f '
                     '(healthy %.4f) | %.0f img/s | ETA %s', step, num_steps,
                     summary['loss'], summary['probe/train_top1'],
                     summary['collapse/normalized_std'],
                     summary['collapse/healthy_std'],
                     summary['images_per_second'], _format_time(eta))
        if (summary['collapse/normalized_std'] <
            diagnostics.COLLAPSE_STD_FRACTION
            * summary['collapse/healthy_std']):
          logging.warning(
              'COLLAPSE: the std of l2-normalised projections is %.2g, under '
              '%.0f%% of its healthy value %.3g: representations are '
              'collapsing to a constant.', summary['collapse/normalized_std'],
              100 * diagnostics.COLLAPSE_STD_FRACTION,
              summary['collapse/healthy_std'])
      if save_now:
        checkpointing.save(manager, state, config)
        saved_step = step
      if knn_every and step % knn_every == 0 and not last:
        accs = evaluator(_online_variables(state))
        writer.write(step, accs)
        logging.info('step %d eval: %s', step, _fmt(accs))
      elif probe_every and step % probe_every == 0 and not last:
        accs = evaluator.probe(_online_variables(state))
        writer.write(step, accs)
        logging.info('epoch %d online probe on the eval split: %s',
                     step // steps_per_epoch, _fmt(accs))
      if stop.signal:
        break
    if saved_step != step:  # Once per step (a periodic save may have run).
      checkpointing.save(manager, state, config)
    checkpointing.finish(manager)
    if stop.signal:
      _stopped(stop.signal, step)
    final = evaluator(_online_variables(state))
    if stop.signal:  # During the evaluation: the rerun evaluates again.
      _stopped(stop.signal, step)
    writer.write(step, final)
    writer.close()
    result = {**final, **baselines, 'step': step,
              'wall_time_s': time.time() - start_time}
    metric_writer.write_result(workdir, f'knn_step{step}', {
        'metrics': result, 'checkpoint_step': step,
        'checkpoint_dir': checkpointing.checkpoint_dir(workdir),
        'config': config.to_dict()})
  # After the result: a plot never fails a finished run.
  if jax.process_index() == 0:
    metric_writer.plot_curves(writer.path,
                              os.path.join(workdir, 'training_curves.png'))
  logging.info('Final: %s', _fmt(result))
  return result


def _stopped(signum: int, step: int):
  logging.warning('Stopped by signal %d at step %d; checkpoint saved. Run the '
                  'same command to resume.', signum, step)
  raise SystemExit(128 + signum)


def _online_variables(state):
  return {'params': state.online_params,
          'batch_stats': state.online_batch_stats}


def _fmt(d):
  return ', '.join(f'{k}={v:.4f}' for k, v in sorted(d.items()))


def summary_table(result: dict[str, float]) -> str:
  """The demo's closing lines: the encoder's kNN accuracy next to baselines."""
  rows = [('this encoder (step %d)' % result.get('step', -1), 'eval/'),
          ('same encoder at random init', 'random_init/'),
          ('raw pixels', 'raw_pixels/')]
  ks = sorted({int(k.rsplit('_k', 1)[1]) for k in result if '_k' in k},
              reverse=True)
  lines = ['Weighted-kNN test accuracy (cosine, temperature from config):',
           f'  {"":32s}' + ''.join(f'{"k=" + str(k):>10s}' for k in ks)]
  for name, prefix in rows:
    vals = [result.get(f'{prefix}knn_top1_k{k}') for k in ks]
    if any(v is not None for v in vals):
      lines.append(f'  {name:32s}' + ''.join(
          f'{v:10.4f}' if v is not None else f'{"-":>10s}' for v in vals))
  if 'eval/probe_top1' in result:
    lines.append(f'  online linear probe top-1: {result["eval/probe_top1"]:.4f}')
  if 'wall_time_s' in result:
    lines.append(f'  wall time: {_format_time(result["wall_time_s"])}')
  return '\n'.join(lines)
