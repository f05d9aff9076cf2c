"""Weighted kNN and top-k accuracy."""

import numpy as np

from byol_jax.evaluation import knn


def test_knn_recovers_labels_of_separated_clusters():
  rng = np.random.RandomState(0)
  centres = rng.randn(5, 16) * 10
  labels = np.repeat(np.arange(5), 60)
  feats = centres[labels] + rng.randn(300, 16)
  test_labels = np.repeat(np.arange(5), 20)
  test = centres[test_labels] + rng.randn(100, 16)
  accs = knn.knn_accuracy(feats, labels, test, test_labels, ks=(20, 200),
                               temperature=0.1, num_classes=5)
  assert accs == {20: 1.0, 200: 1.0}


def test_temperature_weighting_changes_the_vote():
  """One very close neighbour of class 0 vs two farther ones of class 1."""
  bank = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])
  labels = np.array([0, 1, 1])
  query = np.array([[0.99, 0.141]])  # cos: 0.99 to class 0, ~0.71 to class 1.
  sharp = knn.knn_predict(bank, labels, query, ks=(3,),
                               temperature=0.05, num_classes=2)[3]
  flat = knn.knn_predict(bank, labels, query, ks=(3,),
                              temperature=10.0, num_classes=2)[3]
  # exp(0.99/0.05) >> 2 exp(0.71/0.05); at t=10 the weights are ~equal: 2 > 1.
  assert sharp.tolist() == [0] and flat.tolist() == [1]


def test_knn_chunks_do_not_change_the_result():
  rng = np.random.RandomState(1)
  bank, labels = rng.randn(50, 4), rng.randint(0, 3, 50)
  queries = rng.randn(37, 4)
  a = knn.knn_predict(bank, labels, queries, ks=(5,), temperature=0.1,
                           num_classes=3, chunk=8)[5]
  b = knn.knn_predict(bank, labels, queries, ks=(5,), temperature=0.1,
                           num_classes=3, chunk=64)[5]
  np.testing.assert_array_equal(a, b)


def test_topk_accuracy():
  logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
  assert knn.topk_accuracy(logits, np.array([2, 0]), 1) == 0.5
  assert knn.topk_accuracy(logits, np.array([2, 0]), 2) == 1.0
