"""Pretraining called from Python (in process, 8 virtual devices), beside
the command-line tests of test_main.py."""

import json
import logging

from byol_jax import train, validation
from helpers import load_config, write_fake_fashion_mnist


def test_train_and_evaluate_from_python_logs_and_returns_the_result(
    tmp_path, caplog):
  """A script sees the step lines (absl logs only warnings outside app.run),
  gets the final evaluation back, and the workdir holds the run's log."""
  write_fake_fashion_mnist(tmp_path, n_train=64, n_test=21)
  c = load_config('byol_fashion_mnist.py', **{
      'dataset.idx_dir': str(tmp_path), 'model.width': 0.0625,
      'model.projector_hidden': (16,), 'model.predictor_hidden': (16,),
      'model.projection_dim': 8, 'batch_size': 16, 'eval.batch_size': 16,
      'log_every_steps': 2, 'optimizer.warmup_epochs': 0.0,
      'eval.knn_k': 20, 'eval.knn_k_small': 5, 'num_train_steps': 4,
      'eval.baselines': False})
  validation.validate(c, 8)
  workdir = tmp_path / 'run'
  with caplog.at_level(logging.INFO):
    result = train.train_and_evaluate(c, str(workdir))
  assert result['step'] == 4
  assert 0.0 <= result['eval/knn_top1_k20'] <= 1.0
  lines = [r.getMessage() for r in caplog.records]
  assert any(l.startswith('step 4/4 | loss') for l in lines), lines[-20:]
  assert any('compiling the train step' in l for l in lines)
  saved = json.load(open(workdir / 'results' / 'knn_step4.json'))
  assert saved['metrics']['eval/knn_top1_k20'] == result['eval/knn_top1_k20']
  assert 'step 4/4 | loss' in (workdir / 'log.txt').read_text()
