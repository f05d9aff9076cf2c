"""Datasets describe themselves: unset dataset fields come from the data,
set ones that contradict it are refused before anything compiles."""

import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from byol_jax import config_lib, dataset_info, input_pipeline, validation
from helpers import write_fake_fashion_mnist


def _folder_config(path, **fields):
  d = config_lib.base_config().dataset
  d.update(dict(name='folder', path=str(path), train_split='train',
                eval_split='eval', num_channels=-1, num_classes=-1, mean=(),
                std=(), eval_crop_fraction=1.0, eval_holdout=0.0,
                **{'image_size': -1, **fields}))
  return d


def _write(root, grey, sides):
  """Lossless PNGs, class subfolders a/ and b/; returns the pixels."""
  rng = np.random.RandomState(0)
  pixels = []
  for i, (h, w) in enumerate(sides):
    folder = root / 'ab'[i % 2]
    os.makedirs(folder, exist_ok=True)
    x = rng.randint(0, 256, (h, w) if grey else (h, w, 3)).astype(np.uint8)
    if not grey:
      x[..., 2] //= 2  # Channels with different statistics.
    Image.fromarray(x).save(str(folder / f'{i}.png'))
    pixels.append(x.reshape(h, w, -1) / 255.0)
  return pixels


def _resolve(d):
  sources = [input_pipeline.load_source(d, s)
             for s in (d.train_split, d.eval_split)]
  return dataset_info.resolve(d, *sources)


@pytest.mark.parametrize('grey', [False, True])
def test_a_folder_gives_classes_channels_size_and_statistics(tmp_path, grey):
  _write(tmp_path, grey, [(40, 70), (50, 50), (90, 60)] * 2)
  d = _folder_config(tmp_path)
  train, _ = _resolve(d)
  assert d.num_classes == 2
  assert d.num_channels == (1 if grey else 3)
  assert train.channels == d.num_channels
  assert d.image_size == 50  # The median shorter side.
  # mean / std over images already at the size (no resizing): numpy's.
  square = tmp_path / 'square'
  pixels = np.stack(_write(square, grey, [(16, 16)] * 6))
  d = _folder_config(square, image_size=16)  # Derived, 16 would be 32.
  _resolve(d)
  np.testing.assert_allclose(d.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-4)
  np.testing.assert_allclose(d.std, pixels.std(axis=(0, 1, 2)), atol=1e-4)


def test_a_set_class_count_that_contradicts_the_data_is_refused(tmp_path):
  write_fake_fashion_mnist(tmp_path, n_train=30, n_test=20)
  d = config_lib.base_config().dataset
  d.update(config_lib.DATASETS['fashion_mnist'])
  d.idx_dir = str(tmp_path)
  _resolve(d)  # The preset's values are the data's.
  for wrong in (5, 20):
    d.num_classes = wrong
    with pytest.raises(validation.ConfigError, match=re.escape(
        f'dataset.num_classes={wrong} but fashion_mnist has 10 classes; set '
        '--config.dataset.num_classes=10')):
      _resolve(d)
  d.num_classes, d.num_channels = -1, 3
  with pytest.raises(validation.ConfigError,
                     match='num_channels=3 but fashion_mnist images have 1'):
    _resolve(d)
  d.num_channels = -1
  _resolve(d)
  assert (d.num_classes, d.num_channels) == (10, 1)


def test_another_tfds_name_takes_its_own_metadata():
  """--config.dataset.name=cifar100 on a config whose preset is another
  dataset's: the class count is refused; left unset, everything comes from
  cifar100's metadata (32 px, 3 channels, 100 classes)."""
  d = config_lib.base_config().dataset
  d.update(config_lib.DATASETS['fashion_mnist'])
  d.update(dict(name='cifar100', source='tfds'))
  with tfds.testing.mock_data(num_examples=40):
    with pytest.raises(validation.ConfigError,
                       match='num_classes=10 but cifar100 has 100 classes'):
      _resolve(d)
    d.update(dict(num_classes=-1, num_channels=-1, image_size=-1, mean=(),
                  std=()))
    _resolve(d)
  assert (d.num_classes, d.num_channels, d.image_size) == (100, 3, 32)
  assert len(d.mean) == len(d.std) == 3
  assert all(0 < m < 1 for m in d.mean) and all(0 < s for s in d.std)


def test_unset_fields_pass_the_checks_made_before_the_data_is_read():
  c = config_lib.base_config()
  c.dataset.update(dict(num_classes=-1, num_channels=-1, image_size=-1,
                        mean=(), std=()))
  validation.validate(c, num_devices=8)
  c.dataset.mean = (0.5,)
  with pytest.raises(validation.ConfigError, match='dataset.mean has 1 and'):
    validation.validate(c, num_devices=8)
