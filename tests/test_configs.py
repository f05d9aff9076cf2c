"""Every config instantiates, validates, and pins the fields of its row."""

import glob
import os
import re

import pytest
from ml_collections import config_flags  # noqa: F401  (config file loader)
from ml_collections.config_flags import config_flags as cf

from byol_jax import config_lib, run_length, validation

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
  validation.validate(c, num_devices=8)
  assert c.dataset.name and c.batch_size % 8 == 0
  doc = cf._LoadConfigModule('x', path).__doc__
  # The docstring holds the exact command for this file.
  assert 'python -m byol_jax.main' in doc
  assert f'--config=configs/{os.path.basename(path)}' in doc


@pytest.mark.parametrize('path', EVAL, ids=os.path.basename)
def test_every_eval_config_validates(path):
  name = os.path.basename(path)
  mode = 'linear' if name.startswith('linear_eval_') else 'finetune'
  c = load(name)
  validation.validate_eval(c, mode, num_devices=8)
  doc = cf._LoadConfigModule('x', path).__doc__
  assert f'python -m byol_jax.evaluate --mode={mode}' in doc
  assert c.optimizer.nesterov and c.optimizer.momentum == 0.9
  assert c.optimizer.weight_decay == 0.0


def test_linear_eval_and_finetune_protocol_rows():
  c = load('linear_eval_imagenet.py')
  assert (c.batch_size, c.num_epochs, c.augment.train, c.augment.crop_area,
          c.dataset.eval_crop_fraction) == (1024, 80, True, (0.08, 1.0),
                                            0.875)
  assert (c.lr_sweep, c.lr_sweep_holdout) == ((0.4, 0.3, 0.2, 0.1, 0.05),
                                              10009)
  one, ten = load('finetune_imagenet.py', 'percent=1'), load(
      'finetune_imagenet.py', 'percent=10')
  assert (one.subset.fraction, one.num_epochs) == (0.01, 30)
  assert (ten.subset.fraction, ten.num_epochs) == (0.1, 50)
  assert not load('linear_eval_fashion_mnist.py').augment.train  # Fast path.
  assert load('linear_eval_fashion_mnist.py', 'augment=True').augment.train
  c = load('linear_eval_fashion_mnist.py')
  c.batch_size = 100
  c.subset.fraction = 0.0
  with pytest.raises(validation.ConfigError) as e:
    validation.validate_eval(c, 'linear', num_devices=8)
  assert 'batch_size=100 is not divisible' in str(e.value)
  assert 'subset.fraction=0.0' in str(e.value)
  with pytest.raises(validation.ConfigError, match="--mode='probe'"):
    validation.validate_eval(c, 'probe', num_devices=8)


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
  with pytest.raises(validation.ConfigError, match='presets'):
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
  with pytest.raises(validation.ConfigError, match='known keys'):
    config_lib.parse_arg('tau=0.9', epochs=1)


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 100, 'not divisible by the 8 devices'),
    ('model.depth', 19, 'model.depth=19 is unknown'),
    ('optimizer.name', 'adam', "optimizer.name='adam' is unknown"),
    ('target.tau_base', 1.5, 'outside [0, 1]'),
    ('loss.name', 'mse', "loss.name='mse' is unknown"),
    # Accepted silently before: each would train wrongly or lose data.
    ('keep_checkpoints', 0, 'keep_checkpoints=0 must be >= 1'),
    ('optimizer.base_lr', -1.0, 'optimizer.base_lr=-1.0 must be a finite'),
    ('optimizer.base_lr', float('nan'), 'optimizer.base_lr=nan must be'),
    ('optimizer.base_lr', float('inf'), 'optimizer.base_lr=inf must be'),
    ('optimizer.momentum', 2.0, 'optimizer.momentum=2.0 must be in [0, 1)'),
    ('eval.knn_k', 0, 'eval.knn_k=0 must be an integer >= 1'),
    ('eval.knn_temperature', 0.0, 'eval.knn_temperature=0.0 must be > 0'),
    ('augment.view1.flip_prob', 2.0, 'augment.view1.flip_prob=2.0 must be a '
     'probability in [0, 1]'),
    ('augment.view1.crop_area', (1.5, 0.5), 'augment.view1.crop_area=(1.5, '
     '0.5) must be (low, high)'),
    ('checkpoint_every_steps', -5, 'checkpoint_every_steps=-5 must be >= 0'),
    ('dataset.std', (0.0,), r'dataset.std=(0.0,) must be > 0'),
    ('dataset.mean', (0.5, 0.5, 0.5), 'dataset.mean has 3 and dataset.std 1 '
     'values for 1 channels'),
    ('dataset.image_size', 0, 'dataset.image_size=0 must be a positive'),
    ('model.projection_dim', 0, 'model.projection_dim=0'),
    ('eval.batch_size', 0, 'eval.batch_size=0 must be a positive multiple of '
     'the 8 devices'),
    ('batch_size', 0, 'batch_size=0 must be a positive multiple of the 8 '
     'devices'),
    ('batch_size', -16, 'batch_size=-16 must be a positive multiple'),
])
def test_validation_says_what_to_change(field, value, message):
  c = load('byol_fashion_mnist.py')
  *parents, leaf = field.split('.')
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(validation.ConfigError, match=re.escape(message)):
    validation.validate(c, num_devices=8)


def test_knn_evaluation_refuses_a_zero_eval_batch():
  c = load('byol_fashion_mnist.py')
  c.eval.batch_size = 0
  with pytest.raises(validation.ConfigError,
                     match='eval.batch_size=0 must be a positive multiple'):
    validation.validate_eval(c, 'knn', num_devices=8)


def test_warmup_longer_than_training_is_refused():
  c = load('byol_fashion_mnist.py')
  c.num_train_steps = 10
  with pytest.raises(validation.ConfigError, match='warm-up steps'):
    validation.validate_schedule(c, num_train_examples=60000)


def test_table1_and_wider_deeper_encoders():
  for arch, (depth, width) in {'r50x1': (50, 1.0), 'r50x2': (50, 2.0),
                               'r50x4': (50, 4.0),
                               'r200x2': (200, 2.0)}.items():
    c = load('byol_imagenet.py', f'arch={arch}')
    assert (c.model.depth, c.model.width, c.num_epochs, c.batch_size,
            c.optimizer.base_lr, c.target.tau_base) == (
                depth, width, 1000, 4096, 0.2, 0.996)
  assert _module('byol_imagenet.py').PAPER_TOP1[('r200x2', 1000)] == 79.6
  with pytest.raises(validation.ConfigError, match='rDEPTHxWIDTH'):
    load('byol_imagenet.py', 'arch=r51x1')


def _module(name):
  return cf._LoadConfigModule(name, os.path.join(CONFIG_DIR, name))


def _is_300ep_preset(c):
  return (c.num_epochs, c.optimizer.base_lr, c.optimizer.weight_decay,
          c.model.depth, c.model.width) == (300, 0.3, 1e-6, 50, 1.0)


def test_table5a_tau_rows():
  module = _module('byol_ablation_tau.py')
  assert sorted(module.PAPER_TOP1) == [0.0, 0.9, 0.99, 0.999, 1.0]
  for tau in module.PAPER_TOP1:
    c = load('byol_ablation_tau.py', f'tau={tau}')
    validation.validate(c, num_devices=8)
    assert _is_300ep_preset(c) and c.target.use
    assert c.target.tau_base == tau
    # Table 5a keeps tau = 0 constant; the cosine schedule would reach 1.
    assert c.target.schedule == ('constant' if tau == 0 else 'cosine')


def test_table5b_infonce_rows():
  module = _module('byol_ablation_infonce.py')
  assert len(module.PAPER_TOP1) == 8
  for (pred, target, beta), top1 in module.PAPER_TOP1.items():
    c = load('byol_ablation_infonce.py',
             f'predictor={pred},target={target},beta={beta}')
    validation.validate(c, num_devices=8)
    assert _is_300ep_preset(c) and c.loss.name == 'byol'
    assert (c.model.use_predictor, c.target.use, c.loss.beta,
            c.loss.alpha) == (pred, target, beta, 0.1)
    simclr = (pred, target, beta) == (False, False, 1)
    assert c.loss.stop_gradient == (not simclr)
    assert (top1 == 69.4) == simclr
  assert module.PAPER_TOP1[(True, True, 0)] == 72.5


def test_batch_size_ablation_rows():
  for batch in _module('byol_ablation_batch.py').BATCH_SIZES:
    c = load('byol_ablation_batch.py', f'batch={batch}')
    validation.validate(c, num_devices=8)
    assert _is_300ep_preset(c) and c.batch_size == batch
    assert c.optimizer.lr_scaling == 'linear'  # LR = 0.3 x batch / 256.
  with pytest.raises(validation.ConfigError, match='batch=100'):
    load('byol_ablation_batch.py', 'batch=100')


def test_augmentation_removal_rows():
  removed = _module('byol_ablation_augment.py').REMOVED
  assert len(removed) == 8
  full = load('byol_ablation_augment.py', 'keep=baseline')
  assert full.augment.view1 == load('byol_imagenet.py').augment.view1
  crop = load('byol_ablation_augment.py', 'keep=crop_only')
  for view in (crop.augment.view1, crop.augment.view2):
    assert (view.flip_prob, view.jitter_prob, view.grayscale_prob,
            view.blur_prob, view.solarize_prob) == (0, 0, 0, 0, 0)
    assert view.crop_area == (0.08, 1.0)
  no_blur = load('byol_ablation_augment.py', 'keep=no_blur')
  assert (no_blur.augment.view1.blur_prob, no_blur.augment.view2.blur_prob,
          no_blur.augment.view2.solarize_prob,
          no_blur.augment.view1.jitter_prob) == (0, 0, 0.2, 0.8)
  crop_color = load('byol_ablation_augment.py', 'keep=crop_color')
  assert (crop_color.augment.view1.flip_prob,
          crop_color.augment.view1.grayscale_prob) == (0, 0.2)
  for keep in removed:
    validation.validate(load('byol_ablation_augment.py', f'keep={keep}'),
                        num_devices=8)


def test_simsiam_table4_and_ablation_rows():
  module = _module('simsiam_imagenet.py')
  assert module.PAPER_TOP1 == {100: 68.1, 200: 70.0, 400: 70.8, 800: 71.3}
  for epochs in module.PAPER_TOP1:
    assert load('simsiam_imagenet.py', f'epochs={epochs}').num_epochs == epochs
  nsg = load('simsiam_imagenet.py', 'variant=no_stop_gradient')
  assert not nsg.loss.stop_gradient and nsg.model.use_predictor
  npred = load('simsiam_imagenet.py', 'variant=no_predictor')
  assert npred.loss.stop_gradient and not npred.model.use_predictor
  for c in (nsg, npred):
    validation.validate(c, num_devices=8)
    assert (c.num_epochs, c.loss.name, c.target.use) == (100, 'simsiam',
                                                         False)


def test_run_length_is_the_official_formula():
  """num_epochs * num_examples // batch_size (byol/configs/byol.py), the
  warm-up likewise: 1000 ImageNet epochs (1,281,167 images) at batch 4096
  are 312,784 steps with 3,127 of warm-up, not 1000 x 312 = 312,000."""
  c = config_lib.byol_imagenet_config(1000)
  assert run_length.total_steps(c, 1_281_167) == 312_784
  assert run_length.warmup_steps(c, 1_281_167) == 3_127
  c = config_lib.byol_imagenet_config(300)
  assert run_length.total_steps(c, 1_281_167) == 300 * 1_281_167 // 4096
  # Fractional epochs are read as the decimal written: 3.63 x 60,000 / 64.
  c.num_epochs, c.batch_size, c.optimizer.warmup_epochs = 3.63, 64, 0.1
  assert run_length.total_steps(c, 60_000) == 217_800 // 64 == 3403
  assert run_length.warmup_steps(c, 60_000) == 93
  c.num_epochs = 0.29  # 0.29 * 6400 is 1855.9999999999998 in floats.
  assert run_length.total_steps(c, 6_400) == 1856 // 64 == 29
  # The log's epoch boundaries stay whole batches.
  assert run_length.steps_per_epoch(c, 60_000) == 937


def test_the_demo_runs_5100_steps_and_the_long_runs_keep_14_epochs():
  """The demo's length (docs/cpu_demo.md, ninth round: 5.44 epochs, measured
  over five seeds) lives in the recipe the BYOL one-hour config builds on;
  both one-hour configs keep their own 14 epochs (13125 steps)."""
  demo = load('byol_fashion_mnist.py')
  assert run_length.total_steps(demo, 60_000) == 5100
  assert run_length.warmup_steps(demo, 60_000) == 93
  for name in ('byol_fashion_mnist_long.py', 'simsiam_fashion_mnist_long.py'):
    assert run_length.total_steps(load(name), 60_000) == 13125, name


def test_upgrade_fills_what_older_saved_configs_lack():
  """A config saved before fields existed reads back with today's fields:
  what that version used where it differs from today's default (LARS's
  update order), else the default; present fields are kept."""
  old = config_lib.base_config().to_dict()
  del old['optimizer']['lars_order'], old['model']['conv_impl']
  del old['eval']['probe_every_epochs']
  old['model']['width'] = 2.0
  up = config_lib.upgrade(old)
  assert up.optimizer.lars_order == 'optax'  # Not today's 'official'.
  assert up.model.conv_impl == config_lib.base_config().model.conv_impl
  assert up.eval.probe_every_epochs == 1 and up.model.width == 2.0
  sgd = config_lib.simsiam_overrides(config_lib.base_config()).to_dict()
  sgd['optimizer'].pop('lars_order', None)
  assert config_lib.upgrade(sgd).optimizer.lars_order == 'official'
  assert config_lib.upgrade(config_lib.base_config()).to_dict() == (
      config_lib.base_config().to_dict())
  ev = config_lib.eval_base_config().to_dict()
  del ev['checkpoint_every_steps']
  assert config_lib.upgrade(ev).checkpoint_every_steps == 1000
