"""Linear evaluation, fine-tuning and kNN runs on a tiny pretraining
checkpoint, in process: results, names, the checkpoint left untouched,
and the errors raised before anything compiles."""

import json
import shutil

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
