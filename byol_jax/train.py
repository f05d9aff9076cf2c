"""The pretraining loop: config -> data -> step -> metrics / checkpoints.

Side effects live here only; the math is in losses, optim and train_step.
"""

from __future__ import annotations

import os
import time

import jax
from absl import logging

from byol_jax import (checkpointing, console, conv_autotune, dataset_info,
                      diagnostics, image_folder, input_pipeline, loop,
                      metric_writer, networks, optim, parallel, run_length,
                      train_step, validation)
from byol_jax.evaluation import monitor


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Pretrains as `config` says, checkpoints into `workdir`, returns the final
  evaluation (weighted-kNN and probe accuracy, plus baselines if asked).

  Refuses (checkpointing.WorkdirBusyError) while another run holds the
  workdir; process 0 holds the lock for all processes of a multi-host run.
  """
  console.show_progress()
  validation.validate(config, jax.device_count(), jax.process_count())
  validation.check_same_across_processes(config)
  checkpointing.check_workdir(workdir)
  if jax.process_index() != 0:
    return _train_and_evaluate(config, workdir)
  with checkpointing.workdir_lock(workdir), console.log_file(
      os.path.join(workdir, checkpointing.LOG_FILE)):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict[str, float]:
  start_time = time.time()
  # The caller's config stays as given; this one gets the data's values.
  config = config.copy_and_resolve_references()
  d = config.dataset
  train_source = input_pipeline.load_source(d, d.train_split)
  eval_source = input_pipeline.load_source(d, d.eval_split)
  logging.info('%s; %s.', input_pipeline.describe(train_source, 'training'),
               input_pipeline.describe(eval_source, 'evaluation'))
  train_source, eval_source = dataset_info.resolve(d, train_source,
                                                   eval_source)
  validation.validate_schedule(config, len(train_source))
  labelled = d.num_classes > 0 and len(eval_source) > 0
  if not labelled:
    logging.warning(
        'No labelled evaluation images (%s): the kNN monitor, the online '
        'probe and the baselines are off; the collapse diagnostics still '
        'run. For accuracies, give labelled images (class subfolders) in '
        'dataset.path or dataset.eval_path.', d.path or d.name)

  num_steps = run_length.total_steps(config, len(train_source))
  steps_per_epoch = run_length.steps_per_epoch(config, len(train_source))
  peak_lr = optim.scaled_learning_rate(config.optimizer.base_lr,
                                       config.batch_size,
                                       config.optimizer.lr_scaling)
  lr_schedule = optim.learning_rate_schedule(
      peak_lr, num_steps, run_length.warmup_steps(config, len(train_source)))
  tau_schedule = optim.tau_schedule(config.target.tau_base, num_steps,
                                    config.target.schedule)
  image_shape = (d.image_size, d.image_size, d.num_channels)
  # Each view runs through the encoder on its own (per-view BatchNorm), at
  # the per-device batch: the shapes model.conv_impl='auto' times.
  conv_plan = conv_autotune.plan(config.model, image_shape,
                                 config.batch_size // jax.device_count())
  network = networks.build_network(config.model, d.num_classes,
                                   bn_axis_name=parallel.AXIS,
                                   conv_plan=conv_plan)
  optimizer = optim.with_probe_optimizer(
      optim.build_optimizer(config.optimizer, lr_schedule, peak_lr),
      config.probe)
  mesh = parallel.make_mesh()

  manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
  state = train_step.init_state(
      jax.random.key(config.seed), network, optimizer, image_shape,
      use_target=config.target.use, target_init=config.target.init)
  # A host copy: the train step donates (deletes) the state's buffers.
  init_variables = jax.device_get(_online_variables(state))
  state = parallel.replicate(state, mesh)
  if manager.latest_step() is not None:
    checkpointing.check_compatible(checkpointing.load_config(manager), config,
                                   checkpointing.checkpoint_dir(workdir))
    state = checkpointing.restore(manager, state)
    logging.info('Resumed from step %d in %s', int(state.step), workdir)
  start_step = int(jax.device_get(state.step))

  evaluator = monitor.KnnEvaluator(config, network, mesh, train_source,
                                   eval_source)
  # Records past the restored step were of steps this run does again.
  writer = metric_writer.MetricWriter(workdir, resume_step=start_step)
  baselines = {}
  if config.eval.baselines and labelled:
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
      device_views=device_views, rank_every=config.log_every_steps)
  rng = parallel.replicate(jax.random.key(config.seed + 1), mesh)
  e = config.eval
  period = dict(num_examples=len(train_source), batch_size=config.batch_size)
  knn_every = (loop.every(e.knn_every_steps, e.knn_every_epochs, **period)
               if labelled else 0)
  probe_every = (loop.every(0, e.probe_every_epochs, **period)
                 if labelled else 0)

  curves = os.path.join(workdir, 'training_curves.png')

  def clock():
    # Seconds since this process started, for accuracy-against-time plots;
    # the start (Unix time) tells a resumed run's processes apart.
    return {'wall_time_s': time.time() - start_time,
            'process_start_s': start_time}

  def knn(state, step):
    accs = evaluator(_online_variables(state))
    logging.info('step %d eval: %s', step, _fmt(accs))
    writer.write(step, {**accs, **clock()})
    writer.flush()
    if jax.process_index() == 0:  # The picture so far, at each kNN point.
      metric_writer.plot_curves(writer.path, curves)

  def probe(state, step):
    accs = evaluator.probe(_online_variables(state))
    logging.info('epoch %d online probe on the eval split: %s',
                 step // steps_per_epoch, _fmt(accs))
    return accs

  logging.info('Training %d steps (%d per epoch), global batch %d on %d '
               'devices, from step %d; compiling the train step first.',
               num_steps, steps_per_epoch, config.batch_size,
               jax.device_count(), start_step)
  # SIGTERM / SIGINT anywhere below, the final save and evaluation included,
  # end in a durable checkpoint and exit code 128 + signal.
  with loop.StopRequest() as stop:
    state, step = loop.fit(
        state, lambda s, b: step_fn(s, parallel.shard_batch(b, mesh), rng),
        batches, num_steps=num_steps, stop=stop, writer=writer,
        manager=manager, config=config, batch_size=config.batch_size,
        steps_per_epoch=steps_per_epoch, log_every=config.log_every_steps,
        checkpoint_every=config.checkpoint_every_steps,
        periodic=[loop.Periodic(knn_every, knn, 'knn'),
                  loop.Periodic(probe_every, probe, 'probe')],
        describe=_describe, on_summary=_warn_on_collapse,
        profile_dir=os.path.join(workdir, 'profile'),
        profile_steps=config.profile_steps,
        sampled_metrics=diagnostics.SAMPLED_METRICS)
    stop.raise_if_stopped(step)
    final = evaluator(_online_variables(state)) if labelled else {}
    stop.raise_if_stopped(step)  # During the evaluation: the rerun evaluates again.
    if final:
      writer.write(step, {**final, **clock()})
    writer.close()
    result = {**final, **baselines, 'step': step,
              'wall_time_s': time.time() - start_time}
    if labelled:
      metric_writer.write_result(workdir, f'knn_step{step}', {
          'metrics': result, 'checkpoint_step': step,
          'checkpoint_dir': checkpointing.checkpoint_dir(workdir),
          'config': config.to_dict()})
  # After the result: a plot never fails a finished run.
  if jax.process_index() == 0:
    metric_writer.plot_curves(writer.path, curves)
  logging.info('Final: %s', _fmt(result))
  if image_folder.unreadable_files():
    logging.warning('%d unreadable image files were skipped (listed above); '
                    'their places went to the next images of the shuffled '
                    'order.', image_folder.unreadable_files())
  return result


def _describe(summary) -> str:
  probe = ('probe %.3f | ' % summary['probe/train_top1']
           if 'probe/train_top1' in summary else '')
  return ('loss %.4f | %sstd %.4f (healthy %.4f)' % (
      summary['loss'], probe, summary['collapse/normalized_std'],
      summary['collapse/healthy_std']))


def _warn_on_collapse(step, summary) -> None:
  if (summary['collapse/normalized_std'] <
      diagnostics.COLLAPSE_STD_FRACTION * summary['collapse/healthy_std']):
    logging.warning(
        'COLLAPSE at step %d: the std of l2-normalised projections is %.2g, '
        'under %.0f%% of its healthy value %.3g: representations are '
        'collapsing to a constant.', step, summary['collapse/normalized_std'],
        100 * diagnostics.COLLAPSE_STD_FRACTION,
        summary['collapse/healthy_std'])


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
    lines.append(f'  wall time: {loop.format_time(result["wall_time_s"])}')
  return '\n'.join(lines)
