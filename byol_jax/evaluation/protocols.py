"""The supervised protocols on a pretrained encoder (BYOL appendix C):
linear evaluation (frozen encoder, BatchNorm in inference mode) and
semi-supervised fine-tuning, plus kNN; `run` is what the command line does.

Each run reads the pretraining checkpoint without writing to it and trains
through `loop.fit` in WORKDIR/eval/<name>/, which holds its own metrics and
checkpoints: a preempted or killed evaluation resumes when the same command
is run again, and a SIGTERM saves first. WORKDIR/results/<name>.json gets
the metric values, checkpoint step and both configs; earlier results are
never overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

import jax
import ml_collections
import numpy as np
import optax
import tensorflow as tf
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from byol_jax import (augment, checkpointing, classifier, console,
                      conv_autotune, dataset_info, input_pipeline, loop, metric_writer,
                      networks, parallel, pretrained, run_length, train_step,
                      validation)
from byol_jax.evaluation import features, knn, monitor


def _eval_batches(config, source):
  d = config.dataset
  return input_pipeline.eval_batches(
      source, global_batch=config.eval.batch_size, image_size=d.image_size,
      mean=d.mean, std=d.std, crop_fraction=d.eval_crop_fraction,
      process_index=jax.process_index(), process_count=jax.process_count())


def _fit(config, state, step_fn, frozen, make_batches, total: int,
         num_examples: int, mesh, eval_dir: str, stop: loop.StopRequest):
  """Trains the classifier state to `total` steps through `loop.fit`,
  checkpointing into eval_dir and resuming from its latest checkpoint;
  `make_batches(start_step)` is the data from a step on."""
  manager = checkpointing.make_manager(eval_dir, config.keep_checkpoints)
  if manager.latest_step() is not None:
    state = checkpointing.restore(manager, state)
  start = int(jax.device_get(state.step))
  if start >= total:
    logging.info('The classifier in %s finished its %d steps; testing it '
                 'again (the new result does not replace the earlier one).',
                 eval_dir, total)
  elif start:
    logging.info('Resumed the classifier from step %d in %s.', start,
                 eval_dir)
  writer = metric_writer.MetricWriter(eval_dir, resume_step=start)
  state, step = loop.fit(
      state, lambda s, b: step_fn(s, frozen, parallel.shard_batch(b, mesh)),
      make_batches(start), num_steps=total, stop=stop, writer=writer,
      manager=manager, config=config, batch_size=config.batch_size,
      steps_per_epoch=run_length.steps_per_epoch(config, num_examples),
      log_every=config.log_every_steps,
      checkpoint_every=config.checkpoint_every_steps,
      describe=lambda s: 'loss %.4f | train top-1 %.3f | lr %.4g' % (
          s['loss'], s['train_top1'], s['learning_rate']),
      name='classifier step')
  writer.close()
  stop.raise_if_stopped(step)
  return state


def _test(predict, state, frozen, batches) -> dict[str, float]:
  out = features.extract(lambda v, x: predict(*v, x), (state, frozen),
                         batches)
  k5 = min(5, out['logits'].shape[-1])
  return {'top1': knn.topk_accuracy(out['logits'], out['label'], 1),
          f'top{k5}': knn.topk_accuracy(out['logits'], out['label'], k5),
          'num_test_examples': int(len(out['label']))}


def train_classifier(config, encoder, mesh, train_source, eval_source,
                     eval_dir: str, stop: loop.StopRequest, *, frozen=None,
                     finetune_variables=None) -> dict[str, float]:
  """Trains a linear head on `encoder` (frozen: its variables are `frozen`;
  fine-tuned: starting from `finetune_variables`) on train_source, with
  the crop + flip view, and tests it on eval_source (centre crop)."""
  d = config.dataset
  total = run_length.total_steps(config, len(train_source))
  optimizer, schedule = classifier.make_optimizer(
      config.optimizer, total, config.batch_size)
  state = classifier.init_state(
      jax.random.key(config.seed), d.num_classes, encoder.num_features,
      optimizer, finetune_variables)
  a = config.augment
  view = (augment.crop_flip_view(a.crop_area, a.crop_aspect) if a.train
          else augment.crop_flip_view((1.0, 1.0), (1.0, 1.0), flip_prob=0.0))

  def make_batches(start_step):
    return input_pipeline.labelled_dataset(
        train_source, view=view, global_batch=config.batch_size,
        seed=config.seed, image_size=d.image_size, mean=d.mean, std=d.std,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count()).as_numpy_iterator()

  step_fn = classifier.make_classifier_step(
      mesh, encoder=encoder, num_classes=d.num_classes, optimizer=optimizer,
      lr_schedule=schedule)
  state = parallel.replicate(state, mesh)
  logging.info('Training the classifier %d steps (batch %d, %d examples); '
               'compiling its step first.', total, config.batch_size,
               len(train_source))
  state = _fit(config, state, step_fn, frozen, make_batches, total,
               len(train_source), mesh, eval_dir, stop)
  predict = _sharded_predict(mesh, encoder, d.num_classes)
  return _test(predict, state, frozen, _eval_batches(config, eval_source))


def _sharded_predict(mesh, encoder, num_classes):
  predict = classifier.make_predict(mesh, encoder=encoder,
                                    num_classes=num_classes)
  data = NamedSharding(mesh, P(parallel.AXIS))

  def fn(state, frozen, images):
    return predict(state, frozen,
                   jax.make_array_from_process_local_data(data, images))
  return fn


def linear_eval(config, encoder, encoder_variables, mesh, train_source,
                eval_source, eval_dir: str, stop: loop.StopRequest
                ) -> dict[str, float]:
  """Linear evaluation: frozen encoder, BatchNorm in inference mode. With
  augment.train=False the features are extracted once and the head trains
  on them (the fast path; same optimizer, schedule and steps). With
  config.lr_sweep the base LR is picked first on a held-out split of the
  train examples (`select_learning_rate`)."""
  if config.augment.train:
    def fit_and_test(c, train, test, directory):
      return train_classifier(c, encoder, mesh, train, test, directory, stop,
                              frozen=encoder_variables)
    train, test = train_source, eval_source
    split = lambda: input_pipeline.hold_out(train, config.lr_sweep_holdout,
                                            config.seed)
  else:
    embed = features.make_embed_fn(encoder, mesh)
    logging.info('Extracting the features of %d train and %d test examples.',
                 len(train_source), len(eval_source))
    train = features.extract(embed, encoder_variables,
                             _eval_batches(config, train_source))
    test = features.extract(embed, encoder_variables,
                            _eval_batches(config, eval_source))

    def fit_and_test(c, train, test, directory):
      return _head_on_features(c, train, test, mesh, directory, stop)

    def split():
      return tuple({k: v[index] for k, v in train.items()}
                   for index in input_pipeline.holdout_split(
                       train['label'], config.lr_sweep_holdout, config.seed))
  if not config.lr_sweep:
    return fit_and_test(config, train, test, eval_dir)
  fit, held_out = split()
  count = lambda x: len(x['label']) if isinstance(x, dict) else len(x)
  logging.info('LR sweep over base LRs %s: %d examples to fit, %d held out.',
               tuple(config.lr_sweep), count(fit), count(held_out))
  best, scores = select_learning_rate(
      config, lambda c, directory: fit_and_test(c, fit, held_out, directory),
      eval_dir)
  config = config.copy_and_resolve_references()
  config.optimizer.base_lr = best
  logging.info('Training the linear head on all %d train examples at the '
               'chosen base LR %g.', len(train_source), best)
  metrics = fit_and_test(config, train, test, eval_dir)
  return {**metrics, 'base_lr': best, 'lr_sweep_val_top1': scores}


def select_learning_rate(config, fit_and_test, eval_dir: str
                         ) -> tuple[float, dict[str, float]]:
  """BYOL appendix C: one classifier per base LR of config.lr_sweep
  (`fit_and_test(config, directory)` trains on the fit split and returns
  validation metrics), each in eval_dir/lr_sweep/base_lr_<lr>/ (resumable
  like the final run). Returns the base LR of the best validation top-1
  (the first listed on a tie) and every LR's validation top-1."""
  scores = {}
  for lr in config.lr_sweep:
    c = config.copy_and_resolve_references()
    c.optimizer.base_lr = lr
    logging.info('LR sweep: base LR %g on the fit split.', lr)
    scores[f'{lr:g}'] = fit_and_test(
        c, os.path.join(eval_dir, 'lr_sweep', f'base_lr_{lr:g}'))['top1']
    logging.info('LR sweep: base LR %g -> validation top-1 %.4f.', lr,
                 scores[f'{lr:g}'])
  best = max(config.lr_sweep, key=lambda lr: scores[f'{lr:g}'])
  return float(best), scores


def _head_on_features(config, train: dict, test: dict, mesh, eval_dir: str,
                      stop: loop.StopRequest) -> dict[str, float]:
  """The fast path: a linear head trained on extracted train features
  {'embedding': (N, F), 'label': (N,)} and tested on `test`'s."""
  d = config.dataset
  total = run_length.total_steps(config, len(train['label']))
  optimizer, schedule = classifier.make_optimizer(
      config.optimizer, total, config.batch_size)
  state = parallel.replicate(classifier.init_state(
      jax.random.key(config.seed), d.num_classes, train['embedding'].shape[1],
      optimizer), mesh)
  step_fn = classifier.make_classifier_step(
      mesh, encoder=None, num_classes=d.num_classes, optimizer=optimizer,
      lr_schedule=schedule)
  logging.info('Fast path: training the linear head %d steps on the '
               'extracted features.', total)
  state = _fit(config, state, step_fn, None, lambda start: (
      features.feature_batches(train['embedding'], train['label'],
                               config.batch_size, config.seed, start)),
      total, len(train['label']), mesh, eval_dir, stop)
  predict = _sharded_predict(mesh, None, d.num_classes)
  size = config.eval.batch_size
  test_batches = ({'image': test['embedding'][i:i + size],
                   'label': test['label'][i:i + size],
                   'mask': np.ones(len(test['label'][i:i + size]), np.float32)}
                  for i in range(0, len(test['label']), size))
  return _test(predict, state, None, features.pad_batches(test_batches, size))


def finetune(config, encoder, encoder_variables, mesh, train_source,
             eval_source, eval_dir: str, stop: loop.StopRequest
             ) -> dict[str, float]:
  """Semi-supervised fine-tuning of encoder + linear head on the labelled
  subset (config.subset), BatchNorm in train mode over the global batch."""
  labelled = input_pipeline.labelled_subset(
      train_source, fraction=config.subset.fraction,
      seed=config.subset.seed, subset_file=config.subset.file)
  logging.info('Fine-tuning on %d labelled examples of %d.', len(labelled),
               len(train_source))
  return train_classifier(config, encoder, mesh, labelled, eval_source,
                          eval_dir, stop, finetune_variables=encoder_variables)


def result_name(config, mode: str, step: int) -> str:
  """e.g. linear_step3400, finetune_10pct_step3400, knn_step3400."""
  if mode != 'finetune':
    return f'{mode}_step{step}'
  if config.subset.file:
    subset = os.path.splitext(os.path.basename(config.subset.file))[0]
  else:
    subset = f'{100 * config.subset.fraction:g}pct'
  return f'finetune_{subset}_step{step}'


def run(config: Optional[ml_collections.ConfigDict], mode: str,
        checkpoint: str, random_init: bool = False) -> dict:
  """Runs `mode` ('linear', 'finetune', 'knn') on a pretraining checkpoint
  and writes <workdir>/results/<name>.json. `config` may be None for 'knn'
  (the pretraining config's dataset and eval settings are used). With
  `random_init`, the checkpoint's network at the initialisation its run
  started from (the baseline every result should beat). Returns the result
  record."""
  console.show_progress()
  start = time.time()
  mesh = parallel.make_mesh()
  if config is None and mode != 'knn':
    raise validation.ConfigError(f'--mode={mode} needs --config (e.g. '
                                 f'configs/linear_eval_fashion_mnist.py).')
  net = pretrained.load(checkpoint, mesh)
  saved, variables, step = net.config, net.variables, net.step
  if config is None:
    config = ml_collections.ConfigDict(saved)
  validation.validate_eval(config, mode, jax.device_count(),
                           jax.process_count())
  validation.check_same_across_processes(config)
  config = config.copy_and_resolve_references()
  d = config.dataset
  pre = saved['dataset']
  # Unset input fields: as the encoder was pretrained (its normalisation).
  if d.num_channels == -1:
    d.num_channels = pre['num_channels']
  if d.image_size == -1:
    d.image_size = pre['image_size']
  if not len(d.mean) and not len(d.std):
    d.mean, d.std = tuple(pre['mean']), tuple(pre['std'])
  if d.num_channels != saved['dataset']['num_channels']:
    raise validation.ConfigError(
        f'The encoder was pretrained on {saved["dataset"]["num_channels"]}-'
        f'channel images but dataset.num_channels={d.num_channels} '
        f'({d.name}); evaluate on a dataset with the same channels.')
  train_source = input_pipeline.load_source(d, d.train_split)
  eval_source = input_pipeline.load_source(d, d.eval_split)
  train_source, eval_source = dataset_info.resolve(d, train_source,
                                                   eval_source)
  if not d.num_classes or not len(eval_source):
    raise validation.ConfigError(
        f'--mode={mode} needs labelled training and evaluation images, and '
        f'{d.path or d.name} has none: give a folder with class subfolders '
        '(dataset.path, and dataset.eval_path or dataset.eval_holdout).')
  if mode == 'linear' and config.lr_sweep:
    _check_sweep_data(config, train_source)
  workdir = os.path.dirname(net.directory.rstrip('/'))
  name = result_name(config, mode, step)
  if random_init:
    variables = initial_variables(saved, mesh)
    name = name.replace(f'_step{step}', '_random_init')
  if mode == 'knn':
    network = networks.build_network(net.model,
                                     saved['dataset']['num_classes'])
    evaluator = monitor.KnnEvaluator(config, network, mesh, train_source,
                                     eval_source)
    metrics = {k.split('/', 1)[1]: v for k, v in evaluator(variables).items()
               if 'knn' in k}
  else:
    # Fine-tuning trains the encoder: its convolutions as model.conv_impl
    # says ('auto': timed at this batch). The linear protocol only runs it
    # forward, where XLA's convolutions hold their own on CPU.
    conv_plan = () if mode == 'linear' else conv_autotune.plan(
        net.model, (d.image_size, d.image_size, d.num_channels),
        config.batch_size // jax.device_count())
    encoder = classifier.encoder_from_model_config(net.model,
                                                   conv_plan=conv_plan)
    encoder_variables = {'params': variables['params']['encoder'],
                         'batch_stats': variables['batch_stats']['encoder']}
    protocol = linear_eval if mode == 'linear' else finetune
    eval_dir = _resumable_dir(os.path.join(workdir, 'eval', name), config)
    lock = (checkpointing.workdir_lock(eval_dir) if jax.process_index() == 0
            else contextlib.nullcontext())
    with lock, loop.StopRequest() as stop:
      metrics = protocol(config, encoder, encoder_variables, mesh,
                         train_source, eval_source, eval_dir, stop)
  record = {'mode': mode, 'metrics': metrics,
            'checkpoint_step': 0 if random_init else step,
            'random_init': random_init,
            'checkpoint_dir': net.directory, 'dataset': d.name,
            'wall_time_s': time.time() - start, 'config': config.to_dict(),
            'pretrain_config': saved}
  record['path'] = metric_writer.write_result(workdir, name, record)
  logging.info('RESULT %s %s %s: %s -> %s', mode,
               'random init' if random_init else f'step {step}', d.name,
               ', '.join(f'{k}={v:.4f}' if isinstance(v, float) else
                         f'{k}={v}' for k, v in metrics.items()),
               record['path'])
  return record


def _check_sweep_data(config, train_source):
  """The LR sweep's held-out split fits in the train split and, on the
  augmented path, can be picked from it."""
  n = len(train_source)
  if config.lr_sweep_holdout >= n:
    raise validation.ConfigError(
        f'lr_sweep_holdout={config.lr_sweep_holdout} leaves nothing to fit '
        f'of the {n} train examples; hold out fewer.')
  if (config.augment.train
      and isinstance(train_source, input_pipeline.StreamSource)
      and ('[' in train_source.split or train_source.file_names)):
    raise validation.ConfigError(
        f'lr_sweep with augment.train=True holds the first '
        f'{config.lr_sweep_holdout} examples out of the streamed train split, '
        f'which needs a whole split, not {train_source.split!r}; set '
        'dataset.train_split=train, or augment.train=False (features '
        'extracted once).')


def initial_variables(saved: dict, mesh):
  """The online network as the pretraining run initialised it (same seed
  and key split as train_step.init_state)."""
  saved = ml_collections.ConfigDict(saved)
  d = saved.dataset
  network = networks.build_network(saved.model, d.num_classes)
  state = train_step.init_state(
      jax.random.key(saved.seed), network, optax.identity(),
      (d.image_size, d.image_size, d.num_channels), use_target=False)
  return parallel.replicate({'params': state.online_params,
                             'batch_stats': state.online_batch_stats}, mesh)


def _json(tree):
  return json.loads(json.dumps(tree))


def _resumable_dir(path: str, config) -> str:
  """`path`, or path.2, path.3, ...: the first that is new or holds a run
  of this same config (its checkpoints' config, or the config.json written
  when the run began), which is then resumed. Another config's directory,
  or one with neither, is never written into. Processes agree on process
  0's choice, and process 0 writes config.json into a new one."""
  want, candidate, i = _json(config.to_dict()), path, 1
  while tf.io.gfile.exists(candidate):
    marker = os.path.join(candidate, 'config.json')
    if tf.io.gfile.isdir(checkpointing.checkpoint_dir(candidate)):
      saved = checkpointing.load_config(checkpointing.make_manager(candidate))
      if saved is None or _json(saved) == want:
        break
    elif tf.io.gfile.exists(marker):
      with tf.io.gfile.GFile(marker) as f:
        if json.load(f) == want:
          break
    i += 1
    candidate = f'{path}.{i}'
  if jax.process_count() > 1:
    i = int(multihost_utils.broadcast_one_to_all(np.int32(i)))
  chosen = path if i == 1 else f'{path}.{i}'
  marker = os.path.join(chosen, 'config.json')
  if jax.process_index() == 0 and not tf.io.gfile.exists(marker):
    # Before any training: an evaluation stopped before its first
    # checkpoint (an LR sweep's final run, say) is found again.
    tf.io.gfile.makedirs(chosen)
    with tf.io.gfile.GFile(marker + '.tmp', 'w') as f:
      json.dump(want, f, indent=2)
    tf.io.gfile.rename(marker + '.tmp', marker, overwrite=True)
  return chosen
