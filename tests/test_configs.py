"""Every config instantiates, validates, and pins the fields of its row."""

import glob
import os

import pytest
from ml_collections import config_flags  # noqa: F401  (config file loader)
from ml_collections.config_flags import config_flags as cf

from byol_jax import config_lib

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')
ALL = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))


def load(name, arg=None):
  path = os.path.join(CONFIG_DIR, name)
  module = cf._LoadConfigModule(name, path)  # What --config=path does.
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize('path', ALL, ids=os.path.basename)
def test_every_config_validates(path):
  c = load(os.path.basename(path))
  config_lib.validate(c, num_devices=8)
  assert c.dataset.name and c.batch_size % 8 == 0
  doc = cf._LoadConfigModule('x', path).__doc__
  assert 'python -m byol_jax.main --config=configs/' in doc


def test_byol_imagenet_presets():
  c = load('byol_imagenet.py')
  assert (c.num_epochs, c.batch_size, c.optimizer.base_lr,
          c.optimizer.weight_decay, c.target.tau_base) == (
              1000, 4096, 0.2, 1.5e-6, 0.996)
  assert c.optimizer.name == 'lars' and c.optimizer.warmup_epochs == 10
  assert (c.model.depth, c.model.stem, c.model.projector_hidden,
          c.model.projection_dim) == (50, 'imagenet', (4096,), 256)
  c300 = load('byol_imagenet.py', 'epochs=300')
  assert (c300.optimizer.base_lr, c300.target.tau_base) == (0.3, 0.99)
  with pytest.raises(config_lib.ConfigError, match='presets'):
    load('byol_imagenet.py', 'epochs=7')


def test_simsiam_imagenet_row():
  c = load('simsiam_imagenet.py', 'epochs=200')
  assert c.num_epochs == 200 and c.batch_size == 512
  assert not c.target.use and c.loss.name == 'simsiam'
  assert (c.optimizer.name, c.optimizer.base_lr, c.optimizer.weight_decay,
          c.optimizer.warmup_epochs, c.optimizer.fixed_predictor_lr) == (
              'sgd', 0.05, 1e-4, 0.0, True)
  assert c.augment.view1 == c.augment.view2
  assert c.model.projector_hidden == (2048, 2048)
  assert c.model.predictor_hidden == (512,)


def test_config_argument_errors_are_clear():
  with pytest.raises(config_lib.ConfigError, match='known keys'):
    config_lib.parse_arg('tau=0.9', epochs=1)


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 100, 'not divisible by the 8 devices'),
    ('model.depth', 19, 'model.depth=19 is unknown'),
    ('optimizer.name', 'adam', "optimizer.name='adam' is unknown"),
    ('target.tau_base', 1.5, 'outside [0, 1]'),
    ('loss.name', 'mse', "loss.name='mse' is unknown"),
])
def test_validation_says_what_to_change(field, value, message):
  c = load('byol_fashion_mnist.py')
  *parents, leaf = field.split('.')
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace(
      '[', r'\[').replace(']', r'\]')):
    config_lib.validate(c, num_devices=8)


def test_warmup_longer_than_training_is_refused():
  c = load('byol_fashion_mnist.py')
  c.num_train_steps = 10
  with pytest.raises(config_lib.ConfigError, match='warm-up steps'):
    config_lib.validate_schedule(c, num_train_examples=60000)
