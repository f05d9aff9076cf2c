"""Weighted kNN (Wu et al., 2018; the lightly / solo-learn monitor): cosine
similarity of l2-normalised features; the k most similar training examples
vote for their class with weight exp(sim / temperature). And top-k
accuracy of logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import losses


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
