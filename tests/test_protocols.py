"""Linear evaluation, fine-tuning and kNN runs on a tiny pretraining
checkpoint, in process: results, names, the checkpoint left untouched,
and the errors raised before anything compiles."""

import json
import shutil

import numpy as np
import pytest

from byol_jax import validation
from byol_jax.evaluation import protocols
from helpers import eval_config, files


def test_protocols_write_results_and_never_touch_the_checkpoint(pretrained,
                                                                tmp_path):
  source, idx = pretrained
  workdir = tmp_path / 'run'  # Its checkpoint only: no other test's results.
  for d in ('checkpoints', 'checkpoint_checksums'):
    shutil.copytree(source / d, workdir / d)
  before = files(workdir / 'checkpoints')
  lin = protocols.run(eval_config('linear_eval_fashion_mnist.py', idx),
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
  aug = protocols.run(eval_config('linear_eval_fashion_mnist.py', idx, **{
      'augment.train': True}), 'linear', str(workdir / 'checkpoints' / '4'))
  assert (workdir / 'results/linear_step4.2.json').exists()
  assert aug['metrics']['num_test_examples'] == 21
  assert json.load(open(workdir / 'results/linear_step4.json')) == saved

  ft = protocols.run(eval_config('finetune_fashion_mnist.py', idx, **{
      'subset.fraction': 0.5}), 'finetune', str(workdir))
  assert (workdir / 'results/finetune_50pct_step4.json').exists()
  assert 0.0 <= ft['metrics']['top1'] <= 1.0

  knn = protocols.run(None, 'knn', str(workdir))  # The run's own settings.
  assert set(knn['metrics']) == {'knn_top1_k20', 'knn_top1_k5'}
  assert (workdir / 'results/knn_step4.json').exists()

  rand = protocols.run(eval_config('linear_eval_fashion_mnist.py', idx),
                      'linear', str(workdir), random_init=True)
  assert rand['random_init'] and (
      workdir / 'results/linear_random_init.json').exists()
  assert files(workdir / 'checkpoints') == before


def test_protocol_errors_before_any_compilation(pretrained, tmp_path):
  workdir, idx = pretrained
  c = eval_config('linear_eval_fashion_mnist.py', idx)
  c.dataset.num_channels = 3  # A self-consistent 3-channel dataset config.
  c.dataset.mean, c.dataset.std = (0.5,) * 3, (0.25,) * 3
  with pytest.raises(validation.ConfigError, match='1-channel'):
    protocols.run(c, 'linear', str(workdir))
  with pytest.raises(validation.ConfigError, match='needs --config'):
    protocols.run(None, 'linear', str(workdir))
  with pytest.raises(FileNotFoundError, match='pretraining --workdir'):
    protocols.run(c, 'linear', str(tmp_path))


@pytest.mark.parametrize('augment', [False, True])
def test_lr_sweep_picks_the_best_validation_lr_then_trains_on_all(
    pretrained, tmp_path, augment):
  source, idx = pretrained
  workdir = tmp_path / 'run'
  shutil.copytree(source / 'checkpoints', workdir / 'checkpoints')
  c = eval_config('linear_eval_fashion_mnist.py', idx, **{
      'lr_sweep': (0.05, 2.0), 'lr_sweep_holdout': 40,
      'augment.train': augment})
  rec = protocols.run(c, 'linear', str(workdir))
  scores = rec['metrics']['lr_sweep_val_top1']
  assert set(scores) == {'0.05', '2'}
  assert rec['metrics']['base_lr'] == (0.05 if scores['0.05'] >= scores['2']
                                       else 2.0)
  assert tuple(rec['config']['lr_sweep']) == (0.05, 2.0)
  run_dir = workdir / 'eval/linear_step4'
  steps = lambda d: [json.loads(l)['step'] for l in open(d / 'metrics.jsonl')]
  # 4 of each class held out (labels i % 10): 2 epochs of the 24 fit
  # examples at batch 16 are 3 steps per LR; the final head 2 epochs of all
  # 64: 8 steps, at the chosen LR.
  for lr in ('0.05', '2'):
    assert steps(run_dir / f'lr_sweep/base_lr_{lr}')[-1] == 3
  assert steps(run_dir)[-1] == 8
  # The first record: the mean LR of steps 0-3 of a cosine from the chosen
  # base LR to 0 over 8 steps.
  logged = [json.loads(l) for l in open(run_dir / 'metrics.jsonl')]
  cosine = 0.5 * (1 + np.cos(np.pi * np.arange(4) / 8))
  assert logged[0]['learning_rate'] == pytest.approx(
      rec['metrics']['base_lr'] * cosine.mean(), rel=1e-5)

  # Stopped after the sweep, before the final head's first checkpoint: the
  # same command finds its directory again (not linear_step4.2) and gets the
  # same validation scores from the finished sweep runs.
  shutil.rmtree(run_dir / 'checkpoints')
  again = protocols.run(c, 'linear', str(workdir))
  assert not (workdir / 'eval/linear_step4.2').exists()
  assert again['metrics']['lr_sweep_val_top1'] == scores
  assert (workdir / 'results/linear_step4.2.json').exists()


def test_lr_sweep_errors_before_any_compilation(pretrained):
  workdir, idx = pretrained
  with pytest.raises(validation.ConfigError, match='leaves nothing to fit'):
    protocols.run(eval_config('linear_eval_fashion_mnist.py', idx, **{
        'lr_sweep': (0.1, 0.2), 'lr_sweep_holdout': 64}), 'linear',
        str(workdir))
  for sweep in ((0.1, -1.0), (0.1, 0.1000001)):
    with pytest.raises(validation.ConfigError, match='distinct finite'):
      protocols.run(eval_config('linear_eval_fashion_mnist.py', idx, **{
          'lr_sweep': sweep}), 'linear', str(workdir))
  with pytest.raises(validation.ConfigError, match='--mode=linear only'):
    protocols.run(eval_config('finetune_fashion_mnist.py', idx, **{
        'lr_sweep': (0.1, 0.2)}), 'finetune', str(workdir))
