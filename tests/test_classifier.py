"""The linear-classifier step (frozen or fine-tuned encoder), the batches
of extracted features it trains on, and the labelled subsets."""

import jax
import ml_collections
import numpy as np
import pytest

from byol_jax import classifier, input_pipeline, networks, parallel
from byol_jax.evaluation import features, knn, protocols




def _opt_config(lr, nesterov=True):
  return ml_collections.ConfigDict(dict(
      base_lr=lr, lr_scaling='none', momentum=0.9, nesterov=nesterov,
      weight_decay=0.0))


def _linear_step(mesh, encoder, lr, steps, num_classes):
  optimizer, schedule = classifier.make_optimizer(_opt_config(lr), steps, 64)
  step = classifier.make_classifier_step(
      mesh, encoder=encoder, num_classes=num_classes, optimizer=optimizer,
      lr_schedule=schedule)
  return optimizer, step


def test_linear_head_reaches_100_percent_on_separable_features(devices):
  """The fast path (features in, 8 devices): a linearly separable problem
  is learned exactly, and the held-out points are classified exactly."""
  rng = np.random.RandomState(0)
  centres = rng.randn(4, 16) * 4
  labels = np.repeat(np.arange(4), 64).astype(np.int32)
  feats = (centres[labels] + rng.randn(256, 16)).astype(np.float32)
  test_labels = np.repeat(np.arange(4), 8).astype(np.int32)
  test = (centres[test_labels] + rng.randn(32, 16)).astype(np.float32)
  mesh = parallel.make_mesh(devices)
  optimizer, step = _linear_step(mesh, None, 0.1, 200, 4)
  state = parallel.replicate(classifier.init_state(
      jax.random.key(0), 4, 16, optimizer), mesh)
  batches = features.feature_batches(feats, labels, 64, seed=0)
  for i in range(200):
    state, metrics = step(state, None, parallel.shard_batch(next(batches),
                                                              mesh))
    if i % 20 == 0:  # A bounded queue, as in loop.fit.
      jax.block_until_ready(metrics)
  assert float(metrics['train_top1']) == 1.0
  predict = protocols._sharded_predict(mesh, None, 4)
  logits = np.asarray(predict(state, None, test)['logits'])
  assert knn.topk_accuracy(logits, test_labels, 1) == 1.0


def test_feature_batches_cover_each_epoch_once():
  feats = np.arange(10, dtype=np.float32)[:, None]
  it = features.feature_batches(feats, np.arange(10), 4, seed=3)
  seen = np.concatenate([next(it)['label'] for _ in range(5)])  # 2 epochs.
  assert sorted(seen[:10].tolist()) == list(range(10))
  assert sorted(seen[10:].tolist()) == list(range(10))
  assert seen[:10].tolist() != seen[10:].tolist()  # Reshuffled per epoch.


def _tiny_encoder_and_variables(seed=0):
  encoder = networks.ResNet(depth=18, width=1 / 16, stem='small',
                            bn_axis_name=parallel.AXIS)
  x = jax.random.normal(jax.random.key(seed), (16, 8, 8, 1))
  # Train-mode passes so the BN statistics differ from their (0, 1) init.
  variables = encoder.init(jax.random.key(seed), x, train=False)
  _, mutated = encoder.clone(bn_axis_name=None).apply(
      variables, x * 3 + 1, train=True, mutable=['batch_stats'])
  # Host copies: a step donates the device buffers it is given.
  return encoder, jax.device_get({'params': variables['params'], **mutated}), x


def test_linear_eval_step_uses_the_frozen_encoder_in_inference_mode(devices):
  """One SGD-Nesterov step from the zero head equals the hand-computed
  update -lr (1 + m) F^T (softmax - onehot) / B, with F the encoder's
  inference-mode (running-statistics) features; the encoder is not in the
  trained parameters at all."""
  encoder, frozen, x = _tiny_encoder_and_variables()
  labels = np.arange(16, dtype=np.int32) % 3
  mesh = parallel.make_mesh(devices)
  optimizer, step = _linear_step(mesh, encoder, 0.5, 10, 3)
  state = classifier.init_state(jax.random.key(0), 3, encoder.num_features,
                                optimizer)
  assert list(state.params) == ['head']
  new, _ = step(parallel.replicate(state, mesh),
                parallel.replicate(frozen, mesh),
                parallel.shard_batch({'image': np.asarray(x),
                                        'label': labels}, mesh))
  feats = np.asarray(jax.jit(lambda v, x: encoder.apply(v, x, train=False))(
      frozen, x))
  grad = feats.T @ (np.full((16, 3), 1 / 3) - np.eye(3)[labels]) / 16
  np.testing.assert_allclose(np.asarray(new.params['head']['kernel']),
                             -0.5 * 1.9 * grad, rtol=1e-4, atol=1e-6)


def test_finetune_step_on_8_devices_equals_1_device(devices):
  """Fine-tuning: encoder and head both move, BatchNorm statistics are over
  the global batch (cross-replica), gradients pmean'd: 8 devices == 1."""
  encoder, variables, x = _tiny_encoder_and_variables(1)
  labels = np.arange(16, dtype=np.int32) % 3
  batch = {'image': np.asarray(x), 'label': labels}
  results = []
  for mesh in (parallel.make_mesh(devices), parallel.make_mesh(
      devices[:1])):
    optimizer, step = _linear_step(mesh, encoder, 0.5, 10, 3)
    state = parallel.replicate(classifier.init_state(
        jax.random.key(0), 3, encoder.num_features, optimizer, variables),
        mesh)
    for _ in range(2):
      state, _ = step(state, None, parallel.shard_batch(batch, mesh))
    results.append(jax.device_get(state))
  eight, one = results
  chex_leaves = zip(jax.tree.leaves(eight.params), jax.tree.leaves(one.params))
  for a, b in chex_leaves:
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5)
  for a, b in zip(jax.tree.leaves(eight.batch_stats),
                  jax.tree.leaves(one.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=5e-5)
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                       eight.params['encoder'], variables['params'])
  assert max(jax.tree.leaves(moved)) > 1e-4
  stats_moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                             eight.batch_stats, variables['batch_stats'])
  assert max(jax.tree.leaves(stats_moved)) > 1e-4


def test_class_balanced_subset_is_deterministic_and_balanced():
  labels = np.repeat(np.arange(10), 100)[np.random.RandomState(0)
                                         .permutation(1000)]
  a = input_pipeline.class_balanced_subset(labels, 0.1, seed=0)
  assert len(a) == 100 and np.bincount(labels[a]).tolist() == [10] * 10
  np.testing.assert_array_equal(
      a, input_pipeline.class_balanced_subset(labels, 0.1, seed=0))
  assert a.tolist() != input_pipeline.class_balanced_subset(
      labels, 0.1, seed=1).tolist()
  one = input_pipeline.class_balanced_subset(labels, 0.001, seed=0)
  assert np.bincount(labels[one]).tolist() == [1] * 10  # >= 1 per class.


def test_subset_file_errors_say_what_to_do(tmp_path):
  with pytest.raises(input_pipeline.DatasetNotFoundError, match='1percent'):
    input_pipeline.read_subset_file(str(tmp_path / 'missing.txt'))
  (tmp_path / 's.txt').write_text('b.JPEG\n\na.JPEG\nb.JPEG\n')
  assert input_pipeline.read_subset_file(str(tmp_path / 's.txt')) == (
      'a.JPEG', 'b.JPEG')
  src = input_pipeline.ArraySource(np.zeros((4, 2, 2, 1), np.uint8),
                                   np.arange(4))
  with pytest.raises(ValueError, match='subset.fraction'):
    input_pipeline.labelled_subset(src, subset_file=str(tmp_path / 's.txt'))
