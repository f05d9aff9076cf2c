"""Evaluation of pretrained encoders: the weighted-kNN monitor, linear
evaluation and semi-supervised fine-tuning, as a library and a command line:

  python -m byol_jax.evaluate --mode=linear --checkpoint=WORKDIR \
      --config=configs/linear_eval_fashion_mnist.py
  python -m byol_jax.evaluate --mode=finetune --checkpoint=WORKDIR \
      --config=configs/finetune_fashion_mnist.py:percent=10
  python -m byol_jax.evaluate --mode=knn --checkpoint=WORKDIR

Each run reads the checkpoint without writing to it, logs its training to
WORKDIR/eval/<name>/, and writes WORKDIR/results/<name>.json (metric values,
checkpoint step, both configs); earlier results are never overwritten.

Weighted kNN (Wu et al., 2018; the lightly / solo-learn monitor): cosine
similarity of l2-normalised features, the k most similar training examples
vote for their class with weight exp(sim / temperature).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
from absl import app, flags, logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from byol_jax import (augment, checkpointing, classifier, cli, config_lib,
                      console, input_pipeline, losses, metric_writer, networks,
                      official_weights, train_step)


def _sharded(forward, mesh: Optional[Mesh]):
  """jit(forward) with each batch of images split across the mesh's devices
  along axis 0 and outputs gathered; each process passes its slice."""
  if mesh is None:
    return jax.jit(forward)
  data = NamedSharding(mesh, P(*mesh.axis_names))  # Split the batch.
  jitted = jax.jit(forward, in_shardings=(NamedSharding(mesh, P()), data),
                   out_shardings=NamedSharding(mesh, P()))

  def sharded(variables, images):
    return jitted(variables,
                  jax.make_array_from_process_local_data(data, images))
  return sharded


def make_eval_fn(network, mesh: Optional[Mesh] = None):
  """Jitted eval-mode forward: (variables, images) -> {'embedding': (N, C),
  'logits': (N, K)} (encoder features and the online probe's logits)."""
  def forward(variables, images):
    out = network.apply(variables, images, train=False, predict=False)
    return {'embedding': out['embedding'], 'logits': out['logits']}
  return _sharded(forward, mesh)


def make_embed_fn(encoder, mesh: Optional[Mesh] = None):
  """Jitted eval-mode encoder (BatchNorm in inference mode): (encoder
  variables, images) -> {'embedding': (N, C)}."""
  def forward(variables, images):
    return {'embedding': encoder.apply(variables, images, train=False)}
  return _sharded(forward, mesh)


def extract(eval_fn, variables, batches: Iterable[dict]) -> dict[
    str, np.ndarray]:
  """Every output of `eval_fn(variables, images)` (e.g. 'embedding',
  'logits') and the labels, for every real (mask == 1) example in order;
  padding examples of the last batch are dropped here."""
  outs = {'label': []}
  for batch in batches:
    out = jax.device_get(eval_fn(variables, batch['image']))
    if jax.process_count() > 1:  # Outputs are global; so must labels be.
      batch = multihost_utils.process_allgather(
          {k: batch[k] for k in ('label', 'mask')}, tiled=True)
    keep = batch['mask'] > 0
    for k, v in out.items():
      outs.setdefault(k, []).append(np.asarray(v)[keep])
    outs['label'].append(batch['label'][keep])
  return {k: np.concatenate(v) for k, v in outs.items()}


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of examples whose label is among the k largest logits."""
  topk = np.argsort(-logits, axis=-1)[:, :k]
  return float(np.mean(np.any(topk == labels[:, None], axis=-1)))


@functools.partial(jax.jit, static_argnames=('ks', 'num_classes'))
def _knn_scores(queries, bank, bank_labels, *, ks, num_classes, temperature):
  """Class scores of each query for every k in `ks` (one top-k pass)."""
  sims = losses.l2_normalize(queries) @ losses.l2_normalize(bank).T
  top_sims, top_idx = jax.lax.top_k(sims, max(ks))  # Sorted, descending.
  votes = (jax.nn.one_hot(bank_labels[top_idx], num_classes)
           * jnp.exp(top_sims / temperature)[..., None])
  return {k: jnp.sum(votes[:, :k], axis=1) for k in ks}


def knn_predict(train_features, train_labels, test_features, *, ks,
                temperature: float, num_classes: int,
                chunk: int = 512) -> dict[int, np.ndarray]:
  """Weighted-kNN class predictions of `test_features`, for each k in `ks`.

  Queries are processed `chunk` at a time, so memory is O(chunk x N_train)
  whatever the test-set size.
  """
  ks = tuple(sorted({min(k, len(train_features)) for k in ks}))
  bank = jnp.asarray(train_features, jnp.float32)
  bank_labels = jnp.asarray(train_labels, jnp.int32)
  preds = {k: [] for k in ks}
  for start in range(0, len(test_features), chunk):
    q = np.asarray(test_features[start:start + chunk], np.float32)
    n = len(q)
    q = np.pad(q, ((0, chunk - n), (0, 0)), constant_values=1.0)  # One shape.
    scores = _knn_scores(q, bank, bank_labels, ks=ks, num_classes=num_classes,
                         temperature=temperature)
    for k in ks:
      preds[k].append(np.asarray(jnp.argmax(scores[k], -1))[:n])
  return {k: np.concatenate(p) for k, p in preds.items()}


def knn_accuracy(train_features, train_labels, test_features, test_labels,
                 *, ks, temperature: float, num_classes: int
                 ) -> dict[int, float]:
  """Weighted-kNN top-1 accuracy for each k in `ks`."""
  preds = knn_predict(train_features, train_labels, test_features, ks=ks,
                      temperature=temperature, num_classes=num_classes)
  return {k: float(np.mean(p == np.asarray(test_labels)))
          for k, p in preds.items()}


class KnnEvaluator:
  """Weighted-kNN and online-probe accuracy of an encoder on the eval split."""

  def __init__(self, config, network, mesh, train_source, eval_source):
    self.config = config
    self.eval_cfg = config.eval
    self.embed = make_eval_fn(network, mesh)
    bank = train_source
    n = self.eval_cfg.knn_train_examples
    if 0 < n < len(train_source):
      bank = input_pipeline.take(train_source, n)
    self.sources = {'train': bank, 'eval': eval_source}

  def _batches(self, split, whole=False):
    """This process's slice of each eval batch; `whole`: every batch in
    full (host-side computations that every process repeats)."""
    d = self.config.dataset
    return input_pipeline.eval_batches(
        self.sources[split], global_batch=self.eval_cfg.batch_size,
        image_size=d.image_size, mean=d.mean, std=d.std,
        crop_fraction=d.eval_crop_fraction,
        process_index=0 if whole else jax.process_index(),
        process_count=1 if whole else jax.process_count())

  def _accuracies(self, train_feats, train_labels, test_feats, test_labels,
                  prefix):
    e = self.eval_cfg
    accs = knn_accuracy(
        train_feats, train_labels, test_feats, test_labels,
        ks=(e.knn_k, e.knn_k_small), temperature=e.knn_temperature,
        num_classes=self.config.dataset.num_classes)
    return {f'{prefix}knn_top1_k{k}': v for k, v in accs.items()}

  def __call__(self, variables, prefix='eval/') -> dict[str, float]:
    train = extract(self.embed, variables, self._batches('train'))
    test = extract(self.embed, variables, self._batches('eval'))
    out = self._accuracies(train['embedding'], train['label'],
                           test['embedding'], test['label'], prefix)
    out.update(self._probe(test, prefix))
    return out

  def probe(self, variables, prefix='eval/') -> dict[str, float]:
    """Only the online probe's top-1 / top-5 (one pass over the eval split):
    the per-epoch monitor."""
    return self._probe(extract(self.embed, variables, self._batches('eval')),
                       prefix)

  def _probe(self, test, prefix):
    return {f'{prefix}probe_top1': topk_accuracy(test['logits'],
                                                 test['label'], 1),
            f'{prefix}probe_top5': topk_accuracy(test['logits'],
                                                 test['label'], 5)}

  def raw_pixels(self) -> dict[str, float]:
    """kNN on the raw [0, 1] pixels (eval view, before mean/std
    normalisation): the floor any encoder must clear. On the host, from
    the whole splits, in every process (a multi-host run's processes would
    otherwise each see only their slice)."""
    d = self.config.dataset
    flat = []
    for split in ('train', 'eval'):
      pixels, labels = [], []
      for b in self._batches(split, whole=True):
        keep = b['mask'] > 0
        x = b['image'][keep] * np.asarray(d.std) + np.asarray(d.mean)
        pixels.append(x.reshape(len(x), int(np.prod(x.shape[1:]))))
        labels.append(b['label'][keep])
      flat += [np.concatenate(pixels), np.concatenate(labels)]
    return self._accuracies(*flat, 'raw_pixels/')


# ---------------------------------------------------------------------------
# Supervised protocols on a pretrained encoder.


def _eval_batches(config, source):
  d = config.dataset
  return input_pipeline.eval_batches(
      source, global_batch=config.eval.batch_size, image_size=d.image_size,
      mean=d.mean, std=d.std, crop_fraction=d.eval_crop_fraction,
      process_index=jax.process_index(), process_count=jax.process_count())


def num_steps(config, num_examples: int) -> int:
  """round(num_epochs x steps per epoch), at least one step per epoch."""
  return max(1, int(round(config.num_epochs
                          * max(num_examples // config.batch_size, 1))))


def _feature_batches(features: np.ndarray, labels: np.ndarray,
                     global_batch: int, seed: int) -> Iterator[dict]:
  """Endless shuffled batches of extracted features (the fast path): global
  position g of step s is example perm_e[g mod N] with e = g div N and
  perm_e a permutation drawn from (seed, e); this process's slice."""
  n = len(labels)
  local, offset = input_pipeline._process_slice(  # pylint: disable=protected-access
      global_batch, jax.process_index(), jax.process_count())
  perms = {}
  for step in range(2**62):
    g = step * global_batch + offset + np.arange(local)
    # Keep the permutations of the (at most two) epochs this batch spans.
    perms = {e: perms[e] if e in perms else
             np.random.RandomState([seed, e]).permutation(n)
             for e in np.unique(g // n)}
    index = np.array([perms[e][i] for e, i in zip(g // n, g % n)])
    yield {'image': features[index], 'label': labels[index]}


_MAX_STEPS_AHEAD = 32


def _fit(config, state, step_fn, frozen, batches, total: int, mesh, writer
         ) -> classifier.ClassifierState:
  """Runs the classifier step to `total` steps, logging every
  config.log_every_steps (one host transfer per interval)."""
  pending, start = [], time.time()
  for step in range(int(jax.device_get(state.step)), total):
    batch = train_step.shard_batch(next(batches), mesh)
    state, metrics = step_fn(state, frozen, batch)
    pending.append(metrics)
    if len(pending) % _MAX_STEPS_AHEAD == 0:
      # Bounds the dispatched-but-unfinished steps (and their batches in
      # memory): thousands of tiny fast-path steps would otherwise queue up.
      jax.block_until_ready(metrics)
    if (step + 1) % config.log_every_steps == 0 or step + 1 == total:
      summary = metric_writer.mean_metrics(pending)
      pending = []
      if not np.isfinite(summary['loss']):
        raise FloatingPointError(
            f'Classifier loss is {summary["loss"]} at step {step + 1}; lower '
            f'--config.optimizer.base_lr (now {config.optimizer.base_lr}).')
      writer.write(step + 1, summary)
      logging.info('classifier step %d/%d | loss %.4f | train top-1 %.3f | '
                   'lr %.4g | %.1f s', step + 1, total, summary['loss'],
                   summary['train_top1'], summary['learning_rate'],
                   time.time() - start)
  return state


def _test(predict, state, frozen, batches) -> dict[str, float]:
  out = extract(lambda v, x: predict(*v, x), (state, frozen), batches)
  k5 = min(5, out['logits'].shape[-1])
  return {'top1': topk_accuracy(out['logits'], out['label'], 1),
          f'top{k5}': topk_accuracy(out['logits'], out['label'], k5),
          'num_test_examples': int(len(out['label']))}


def train_classifier(config, encoder, mesh, train_source, eval_source,
                     writer, *, frozen=None, finetune_variables=None
                     ) -> dict[str, float]:
  """Trains a linear head on `encoder` (frozen: its variables are `frozen`;
  fine-tuned: starting from `finetune_variables`) on train_source, with
  the crop + flip view, and tests it on eval_source (centre crop)."""
  d = config.dataset
  total = num_steps(config, len(train_source))
  optimizer, schedule = classifier.make_optimizer(
      config.optimizer, total, config.batch_size)
  state = classifier.init_state(
      jax.random.key(config.seed), d.num_classes, encoder.num_features,
      optimizer, finetune_variables)
  a = config.augment
  view = (augment.crop_flip_view(a.crop_area, a.crop_aspect) if a.train
          else augment.crop_flip_view((1.0, 1.0), (1.0, 1.0), flip_prob=0.0))
  data = input_pipeline.labelled_dataset(
      train_source, view=view, global_batch=config.batch_size,
      seed=config.seed, image_size=d.image_size, mean=d.mean, std=d.std,
      process_index=jax.process_index(), process_count=jax.process_count())
  step_fn = classifier.make_classifier_step(
      mesh, encoder=encoder, num_classes=d.num_classes, optimizer=optimizer,
      lr_schedule=schedule)
  state = train_step.replicate(state, mesh)
  logging.info('Training the classifier %d steps (batch %d, %d examples).',
               total, config.batch_size, len(train_source))
  state = _fit(config, state, step_fn, frozen, data.as_numpy_iterator(),
               total, mesh, writer)
  predict = _sharded_predict(mesh, encoder, d.num_classes)
  return _test(predict, state, frozen, _eval_batches(config, eval_source))


def _sharded_predict(mesh, encoder, num_classes):
  predict = classifier.make_predict(mesh, encoder=encoder,
                                    num_classes=num_classes)
  data = NamedSharding(mesh, P(train_step.AXIS))

  def fn(state, frozen, images):
    return predict(state, frozen,
                   jax.make_array_from_process_local_data(data, images))
  return fn


def linear_eval(config, encoder, encoder_variables, mesh, train_source,
                eval_source, writer) -> dict[str, float]:
  """Linear evaluation: frozen encoder, BatchNorm in inference mode. With
  augment.train=False the features are extracted once and the head trains
  on them (the fast path; same optimizer, schedule and steps)."""
  if config.augment.train:
    return train_classifier(config, encoder, mesh, train_source, eval_source,
                            writer, frozen=encoder_variables)
  d = config.dataset
  embed = make_embed_fn(encoder, mesh)
  train = extract(embed, encoder_variables, _eval_batches(config,
                                                          train_source))
  test = extract(embed, encoder_variables, _eval_batches(config,
                                                         eval_source))
  total = num_steps(config, len(train['label']))
  optimizer, schedule = classifier.make_optimizer(
      config.optimizer, total, config.batch_size)
  state = train_step.replicate(classifier.init_state(
      jax.random.key(config.seed), d.num_classes, train['embedding'].shape[1],
      optimizer), mesh)
  step_fn = classifier.make_classifier_step(
      mesh, encoder=None, num_classes=d.num_classes, optimizer=optimizer,
      lr_schedule=schedule)
  logging.info('Fast path: %d train features extracted; training the linear '
               'head %d steps.', len(train['label']), total)
  batches = _feature_batches(train['embedding'], train['label'],
                             config.batch_size, config.seed)
  state = _fit(config, state, step_fn, None, batches, total, mesh, writer)
  predict = _sharded_predict(mesh, None, d.num_classes)
  test_batches = ({'image': test['embedding'][i:i + config.eval.batch_size],
                   'label': test['label'][i:i + config.eval.batch_size],
                   'mask': np.ones(len(test['label'][
                       i:i + config.eval.batch_size]), np.float32)}
                  for i in range(0, len(test['label']),
                                 config.eval.batch_size))
  return _test(predict, state, None,
               _pad_batches(test_batches, config.eval.batch_size))


def _pad_batches(batches, size):
  """Zero-pads each batch to `size` rows (mask 0), for one compiled shape."""
  for b in batches:
    pad = size - len(b['label'])
    yield {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1))
           for k, v in b.items()}


def finetune(config, encoder, encoder_variables, mesh, train_source,
             eval_source, writer) -> dict[str, float]:
  """Semi-supervised fine-tuning of encoder + linear head on the labelled
  subset (config.subset), BatchNorm in train mode over the global batch."""
  labelled = input_pipeline.labelled_subset(
      train_source, fraction=config.subset.fraction,
      seed=config.subset.seed, subset_file=config.subset.file)
  logging.info('Fine-tuning on %d labelled examples of %d.', len(labelled),
               len(train_source))
  return train_classifier(config, encoder, mesh, labelled, eval_source,
                          writer, finetune_variables=encoder_variables)


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
  start = time.time()
  mesh = train_step.make_mesh()
  directory, saved, variables, step = _load(checkpoint, mesh)
  if config is None:
    if mode != 'knn':
      raise config_lib.ConfigError(f'--mode={mode} needs --config (e.g. '
                                   f'configs/linear_eval_fashion_mnist.py).')
    config = ml_collections.ConfigDict(saved)
  config_lib.validate_eval(config, mode, jax.device_count(),
                           jax.process_count())
  config_lib.check_same_across_processes(config)
  d = config.dataset
  if d.num_channels != saved['dataset']['num_channels']:
    raise config_lib.ConfigError(
        f'The encoder was pretrained on {saved["dataset"]["num_channels"]}-'
        f'channel images but dataset.num_channels={d.num_channels} '
        f'({d.name}); evaluate on a dataset with the same channels.')
  train_source = input_pipeline.load_source(d, d.train_split)
  eval_source = input_pipeline.load_source(d, d.eval_split)
  config_lib.validate_data(
      d, input_pipeline.num_channels(train_source),
      max(map(input_pipeline.label_classes, (train_source, eval_source))))
  model = ml_collections.ConfigDict(saved['model'])
  workdir = os.path.dirname(directory.rstrip('/'))
  name = result_name(config, mode, step)
  if random_init:
    variables = _initial_variables(saved, mesh)
    name = name.replace(f'_step{step}', '_random_init')
  if mode == 'knn':
    network = networks.build_network(model, saved['dataset']['num_classes'])
    evaluator = KnnEvaluator(config, network, mesh, train_source,
                             eval_source)
    metrics = {k.split('/', 1)[1]: v for k, v in evaluator(variables).items()
               if 'knn' in k}
  else:
    encoder = classifier.encoder_from_model_config(model)
    encoder_variables = {'params': variables['params']['encoder'],
                         'batch_stats': variables['batch_stats']['encoder']}
    protocol = linear_eval if mode == 'linear' else finetune
    writer = metric_writer.MetricWriter(_unique_dir(
        os.path.join(workdir, 'eval', name)))
    metrics = protocol(config, encoder, encoder_variables, mesh,
                       train_source, eval_source, writer)
    writer.close()
  record = {'mode': mode, 'metrics': metrics,
            'checkpoint_step': 0 if random_init else step,
            'random_init': random_init,
            'checkpoint_dir': directory, 'dataset': d.name,
            'wall_time_s': time.time() - start, 'config': config.to_dict(),
            'pretrain_config': saved}
  record['path'] = metric_writer.write_result(workdir, name, record)
  logging.info('RESULT %s %s %s: %s -> %s', mode,
               'random init' if random_init else f'step {step}', d.name,
               ', '.join(f'{k}={v:.4f}' if isinstance(v, float) else
                         f'{k}={v}' for k, v in metrics.items()),
               record['path'])
  return record


def _load(checkpoint: str, mesh):
  """(checkpoints directory, pretraining config, online variables, step) of
  a pretraining checkpoint or an official BYOL .pkl (ImageNet, 224 px)."""
  if checkpoint.endswith('.pkl'):
    model, variables, step = official_weights.load(checkpoint)
    saved = config_lib.base_config()
    saved.model = model
    saved.dataset.num_classes = variables['params']['probe'][
        'kernel'].shape[1]
    return (os.path.join(os.path.dirname(os.path.abspath(checkpoint)),
                         'checkpoints'), saved.to_dict(),
            train_step.replicate(variables, mesh), step)
  directory, _ = checkpointing.resolve(checkpoint)
  saved, variables, step = checkpointing.load_pretrained(
      checkpoint, NamedSharding(mesh, P()))
  return directory, saved, variables, step


def _initial_variables(saved: dict, mesh):
  """The online network as the pretraining run initialised it (same seed
  and key split as train_step.init_state)."""
  saved = ml_collections.ConfigDict(saved)
  d = saved.dataset
  network = networks.build_network(saved.model, d.num_classes)
  state = train_step.init_state(
      jax.random.key(saved.seed), network, optax.identity(),
      (d.image_size, d.image_size, d.num_channels), use_target=False)
  return train_step.replicate({'params': state.online_params,
                               'batch_stats': state.online_batch_stats}, mesh)


def _unique_dir(path: str) -> str:
  """`path`, or path.2, path.3, ...: the first that does not exist yet."""
  candidate, i = path, 1
  while tf.io.gfile.exists(candidate):
    i += 1
    candidate = f'{path}.{i}'
  return candidate


def _define_flags():
  """Defined when run as a program only: `byol_jax.main` (which imports this
  module through train) has its own --config."""
  flags.DEFINE_enum('mode', None, list(config_lib.EVAL_MODES),
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
  f = flags.FLAGS
  record = run(f.config, f.mode, f.checkpoint, f.random_init)
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
