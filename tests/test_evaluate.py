"""Weighted kNN and top-k accuracy."""

import json

import numpy as np
import pytest

from byol_jax.evaluation import features, knn, protocols


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


# --- Linear evaluation and fine-tuning -------------------------------------

import jax  # noqa: E402
import ml_collections  # noqa: E402

from byol_jax import classifier, input_pipeline, networks, parallel  # noqa: E402


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


# --- The protocols end to end on a tiny pretraining checkpoint -------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from ml_collections.config_flags import config_flags as cf  # noqa: E402

import shutil  # noqa: E402

from helpers import ROOT, cli_env, saved_state  # noqa: E402
from byol_jax import config_lib  # noqa: E402

def _config(name, **overrides):
  c = cf._LoadConfigModule(name, os.path.join(ROOT, 'configs', name)
                           ).get_config()
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _eval_config(name, idx, **overrides):
  return _config(name, **{'dataset.idx_dir': str(idx), 'batch_size': 16,
                          'eval.batch_size': 16, 'num_epochs': 2.0,
                          'log_every_steps': 4, **overrides})


def _files(directory):
  return {p: p.read_bytes() for p in sorted(directory.rglob('*'))
          if p.is_file()}


def test_protocols_write_results_and_never_touch_the_checkpoint(pretrained):
  workdir, idx = pretrained
  before = _files(workdir / 'checkpoints')
  lin = protocols.run(_eval_config('linear_eval_fashion_mnist.py', idx),
                     'linear', str(workdir))
  assert lin['checkpoint_step'] == 4 and lin['metrics']['top5'] >= lin[
      'metrics']['top1']
  assert lin['metrics']['num_test_examples'] == 21  # Each test image once.
  saved = json.load(open(workdir / 'results/linear_step4.json'))
  assert saved['metrics'] == lin['metrics'] and saved['mode'] == 'linear'
  assert saved['config']['optimizer']['nesterov'] is True
  assert saved['pretrain_config']['model']['depth'] == 18
  # 2 epochs of 64 // 16 steps, logged every 4.
  logged = [json.loads(l) for l in open(
      workdir / 'eval/linear_step4/metrics.jsonl')]
  assert [r['step'] for r in logged] == [4, 8]

  # Augmented path, from a step directory: a second result, not overwritten.
  aug = protocols.run(_eval_config('linear_eval_fashion_mnist.py', idx, **{
      'augment.train': True}), 'linear', str(workdir / 'checkpoints' / '4'))
  assert (workdir / 'results/linear_step4.2.json').exists()
  assert aug['metrics']['num_test_examples'] == 21
  assert json.load(open(workdir / 'results/linear_step4.json')) == saved

  ft = protocols.run(_eval_config('finetune_fashion_mnist.py', idx, **{
      'subset.fraction': 0.5}), 'finetune', str(workdir))
  assert (workdir / 'results/finetune_50pct_step4.json').exists()
  assert 0.0 <= ft['metrics']['top1'] <= 1.0

  knn = protocols.run(None, 'knn', str(workdir))  # The run's own settings.
  assert set(knn['metrics']) == {'knn_top1_k20', 'knn_top1_k5'}
  assert (workdir / 'results/knn_step4.2.json').exists()  # Training's kept.

  rand = protocols.run(_eval_config('linear_eval_fashion_mnist.py', idx),
                      'linear', str(workdir), random_init=True)
  assert rand['random_init'] and (
      workdir / 'results/linear_random_init.json').exists()
  assert _files(workdir / 'checkpoints') == before


def test_protocol_errors_before_any_compilation(pretrained, tmp_path):
  workdir, idx = pretrained
  c = _eval_config('linear_eval_fashion_mnist.py', idx)
  c.dataset.num_channels = 3  # A self-consistent 3-channel dataset config.
  c.dataset.mean, c.dataset.std = (0.5,) * 3, (0.25,) * 3
  with pytest.raises(config_lib.ConfigError, match='1-channel'):
    protocols.run(c, 'linear', str(workdir))
  with pytest.raises(config_lib.ConfigError, match='needs --config'):
    protocols.run(None, 'linear', str(workdir))
  with pytest.raises(FileNotFoundError, match='pretraining --workdir'):
    protocols.run(c, 'linear', str(tmp_path))


def test_evaluate_command_line(pretrained):
  workdir, idx = pretrained
  r = subprocess.run(
      [sys.executable, '-m', 'byol_jax.evaluate', '--mode=linear',
       f'--checkpoint={workdir}',
       '--config=configs/linear_eval_fashion_mnist.py',
       f'--config.dataset.idx_dir={idx}', '--config.batch_size=16',
       '--config.eval.batch_size=16', '--config.num_epochs=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=cli_env())
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'linear evaluation of step 4 on fashion_mnist: top1' in r.stdout
  assert 'RESULT linear step 4' in r.stderr
  path = r.stdout.strip().rsplit('written to ', 1)[1]
  assert json.load(open(path))['checkpoint_step'] == 4


_SIGNAL_AT_SAVE = '''
import os, signal, sys
from byol_jax import checkpointing, evaluate
_save, at = checkpointing.save, int(os.environ['AT_STEP'])
sig = getattr(signal, os.environ['SIGNAL'])
def save_and_signal(manager, state, config):
  if int(state.step) == at and sig == signal.SIGTERM:
    os.kill(os.getpid(), sig)  # Preempted at this step: the loop saves, exits.
  _save(manager, state, config)
  if int(state.step) == at and sig == signal.SIGKILL:
    manager.wait_until_finished()
    os.kill(os.getpid(), sig)  # Killed right after this checkpoint.
checkpointing.save = save_and_signal
sys.argv = sys.argv[1:]
evaluate.run_cli()
'''


def _evaluate_cli(workdir, idx, mode, config, *extra, signal_at=None):
  cmd = [f'--mode={mode}', f'--checkpoint={workdir}',
         f'--config=configs/{config}', f'--config.dataset.idx_dir={idx}',
         '--config.batch_size=16', '--config.eval.batch_size=16',
         '--config.log_every_steps=2', '--config.checkpoint_every_steps=2',
         *extra]
  env = cli_env()
  if signal_at is None:
    cmd = [sys.executable, '-m', 'byol_jax.evaluate', *cmd]
  else:
    cmd = [sys.executable, '-c', _SIGNAL_AT_SAVE, 'evaluate', *cmd]
    env.update(AT_STEP=str(signal_at[0]), SIGNAL=signal_at[1])
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=env)


@pytest.mark.parametrize('mode,config,extra,name', [
    ('linear', 'linear_eval_fashion_mnist.py', ('--config.num_epochs=2',),
     'linear_step4'),
    ('finetune', 'finetune_fashion_mnist.py',
     ('--config.num_epochs=4', '--config.subset.fraction=0.5'),
     'finetune_50pct_step4')])
def test_a_killed_evaluation_resumes_to_the_same_classifier(
    pretrained, tmp_path, mode, config, extra, name):
  """SIGKILL after the step-2 checkpoint, then SIGTERM at step 4 (saved, exit
  143), then the same command: the classifier (head, fine-tuned encoder,
  optimizer state) and the test accuracy are bitwise those of a run never
  interrupted, and the pretraining checkpoint is untouched."""
  source, idx = pretrained
  straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
  for w in (straight, stopped):  # The checkpoint only (no earlier evals).
    for d in ('checkpoints', 'checkpoint_checksums'):
      shutil.copytree(source / d, w / d)
  before = _files(stopped / 'checkpoints')
  r = _evaluate_cli(straight, idx, mode, config, *extra)
  assert r.returncode == 0, r.stderr[-3000:]
  r = _evaluate_cli(stopped, idx, mode, config, *extra,
                    signal_at=(2, 'SIGKILL'))
  assert r.returncode == -9, r.stderr[-3000:]
  r = _evaluate_cli(stopped, idx, mode, config, *extra,
                    signal_at=(4, 'SIGTERM'))
  assert r.returncode == 128 + 15, r.stderr[-3000:]
  assert 'Resumed the classifier from step 2' in r.stderr
  assert 'Stopped by signal 15 at step 4; checkpoint saved' in r.stderr
  assert not list((stopped / 'results').glob(f'{name}*'))  # Not finished.
  r = _evaluate_cli(stopped, idx, mode, config, *extra)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Resumed the classifier from step 4' in r.stderr
  eval_dir = lambda w: w / 'eval' / name
  steps = sorted(int(p.name) for p in (eval_dir(straight) / 'checkpoints')
                 .iterdir() if p.name.isdigit())
  last = steps[-1]
  assert last > 4
  a, b = (saved_state(eval_dir(w), last) for w in (straight, stopped))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  result = lambda w: json.load(open(w / 'results' / f'{name}.json'))
  assert result(straight)['metrics'] == result(stopped)['metrics']
  # One record per logged step, as if never interrupted.
  logged = lambda w: [json.loads(l)['step'] for l in open(
      eval_dir(w) / 'metrics.jsonl')]
  assert logged(stopped) == logged(straight)
  assert _files(stopped / 'checkpoints') == before
