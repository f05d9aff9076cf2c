"""The in-training monitor: weighted-kNN and online-probe accuracy of the
encoder on the eval split, and the raw-pixel kNN floor."""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from byol_jax import input_pipeline
from byol_jax.evaluation import features, knn


class KnnEvaluator:
  """Weighted-kNN and online-probe accuracy of an encoder on the eval split."""

  def __init__(self, config, network, mesh, train_source, eval_source):
    self.config = config
    self.eval_cfg = config.eval
    self.embed = features.make_eval_fn(network, mesh)
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
    accs = knn.knn_accuracy(
        train_feats, train_labels, test_feats, test_labels,
        ks=(e.knn_k, e.knn_k_small), temperature=e.knn_temperature,
        num_classes=self.config.dataset.num_classes)
    return {f'{prefix}knn_top1_k{k}': v for k, v in accs.items()}

  def __call__(self, variables, prefix='eval/') -> dict[str, float]:
    start = time.time()
    logging.info('kNN evaluation: extracting the features of %d bank and %d '
                 'eval examples.', len(self.sources['train']),
                 len(self.sources['eval']))
    train = features.extract(self.embed, variables, self._batches('train'))
    test = features.extract(self.embed, variables, self._batches('eval'))
    logging.info('kNN evaluation: features extracted in %.1f s.',
                 time.time() - start)
    out = self._accuracies(train['embedding'], train['label'],
                           test['embedding'], test['label'], prefix)
    out.update(self._probe(test, prefix))
    return out

  def probe(self, variables, prefix='eval/') -> dict[str, float]:
    """Only the online probe's top-1 / top-5 (one pass over the eval split):
    the per-epoch monitor."""
    return self._probe(
        features.extract(self.embed, variables, self._batches('eval')), prefix)

  def _probe(self, test, prefix):
    return {f'{prefix}probe_top1': knn.topk_accuracy(test['logits'],
                                                 test['label'], 1),
            f'{prefix}probe_top5': knn.topk_accuracy(test['logits'],
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
