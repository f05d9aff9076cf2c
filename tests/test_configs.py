"""Every config instantiates, validates, and pins the fields of its row."""

import glob
import os

import pytest
from ml_collections import config_flags  # noqa: F401  (config file loader)
from ml_collections.config_flags import config_flags as cf

from byol_jax import config_lib

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')
ALL = sorted(glob.glob(os.path.join(CONFIG_DIR, '*.py')))
EVAL_PREFIXES = ('linear_eval_', 'finetune_')
PRETRAIN = [p for p in ALL if not os.path.basename(p).startswith(
    EVAL_PREFIXES)]
EVAL = [p for p in ALL if os.path.basename(p).startswith(EVAL_PREFIXES)]


def load(name, arg=None):
  path = os.path.join(CONFIG_DIR, name)
  module = cf._LoadConfigModule(name, path)  # What --config=path does.
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize('path', PRETRAIN, ids=os.path.basename)
def test_every_config_validates(path):
  c = load(os.path.basename(path))
  config_lib.validate(c, num_devices=8)
  assert c.dataset.name and c.batch_size % 8 == 0
  doc = cf._LoadConfigModule('x', path).__doc__
  assert 'python -m byol_jax.main --config=configs/' in doc


@pytest.mark.parametrize('path', EVAL, ids=os.path.basename)
def test_every_eval_config_validates(path):
  name = os.path.basename(path)
  mode = 'linear' if name.startswith('linear_eval_') else 'finetune'
  c = load(name)
  config_lib.validate_eval(c, mode, num_devices=8)
  doc = cf._LoadConfigModule('x', path).__doc__
  assert f'python -m byol_jax.evaluate --mode={mode}' in doc
  assert c.optimizer.nesterov and c.optimizer.momentum == 0.9
  assert c.optimizer.weight_decay == 0.0


def test_linear_eval_and_finetune_protocol_rows():
  c = load('linear_eval_imagenet.py')
  assert (c.batch_size, c.num_epochs, c.augment.train, c.augment.crop_area,
          c.dataset.eval_crop_fraction) == (1024, 80, True, (0.08, 1.0),
                                            0.875)
  one, ten = load('finetune_imagenet.py', 'percent=1'), load(
      'finetune_imagenet.py', 'percent=10')
  assert (one.subset.fraction, one.num_epochs) == (0.01, 30)
  assert (ten.subset.fraction, ten.num_epochs) == (0.1, 50)
  assert not load('linear_eval_fashion_mnist.py').augment.train  # Fast path.
  assert load('linear_eval_fashion_mnist.py', 'augment=True').augment.train
  c = load('linear_eval_fashion_mnist.py')
  c.batch_size = 100
  c.subset.fraction = 0.0
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate_eval(c, 'linear', num_devices=8)
  assert 'batch_size=100 is not divisible' in str(e.value)
  assert 'subset.fraction=0.0' in str(e.value)
  with pytest.raises(config_lib.ConfigError, match="--mode='probe'"):
    config_lib.validate_eval(c, 'probe', num_devices=8)


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
