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


def test_pretraining_on_a_folder_of_unlabelled_images(tmp_path, caplog):
  """A tree of images with no class folders trains: the log says the label
  monitors are off, the collapse diagnostics are logged, the checkpoint is
  written, and no accuracy result is made up."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  for i in range(24):  # Two levels deep: no class layout.
    folder = tmp_path / 'photos' / f'trip{i % 3}' / f'day{i % 2}'
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.randint(0, 256, (20 + i, 24, 3)).astype(
        np.uint8)).save(str(folder / f'{i}.{"jpg" if i % 2 else "png"}'))
  c = load_config('byol_folder_small.py', **{
      'dataset.path': str(tmp_path / 'photos'), 'model.width': 0.0625,
      'model.projector_hidden': (16,), 'model.predictor_hidden': (16,),
      'model.projection_dim': 8, 'batch_size': 16, 'eval.batch_size': 16,
      'log_every_steps': 2, 'optimizer.warmup_epochs': 0.0,
      'num_train_steps': 4, 'dataset.image_size': 16})
  workdir = tmp_path / 'run'
  with caplog.at_level(logging.INFO):
    result = train.train_and_evaluate(c, str(workdir))
  lines = [r.getMessage() for r in caplog.records]
  assert any('training: 24 unlabelled images under' in l for l in lines)
  assert any('the kNN monitor, the online probe and the baselines are off'
             in l for l in lines)
  assert any(l.startswith('step 4/4 | loss') and 'probe' not in l
             and 'std' in l for l in lines), lines[-10:]
  assert result['step'] == 4 and not any('knn' in k for k in result)
  assert not (workdir / 'results').exists()
  saved = json.loads((workdir / 'metrics.jsonl').read_text().splitlines()[-1])
  assert 'collapse/normalized_std' in saved and 'probe/loss' not in saved
  assert (workdir / 'checkpoints' / '4').is_dir()
  assert c.dataset.num_classes == -1  # The caller's config is left as given.
