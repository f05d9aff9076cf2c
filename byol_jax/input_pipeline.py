"""tf.data input pipelines: two augmented views for pretraining, and
fixed-order, padded-and-masked batches for evaluation.

Sources: any TFDS image-classification dataset by name and split, and
Fashion-MNIST read offline from the idx files of Debian's
`dataset-fashion-mnist` package. Both feed the same pipeline code.

Determinism: the training stream is a function of (seed, step). Global
example position g = step * global_batch + i maps to epoch g // N and to
index `index_shuffle(g % N, seed=(seed, epoch))` (in-memory sources), and its
two views are drawn with the stateless seed (seed, g). A run resumed at step s
therefore sees exactly the batches an uninterrupted run sees from step s on.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from byol_jax import augment

FASHION_MNIST_IDX_DIR = '/usr/share/datasets/fashion-mnist'
_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


class DatasetNotFoundError(FileNotFoundError):
  """The configured dataset cannot be read on this machine."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A split held in memory: uint8 images (N, H, W, C) and int32 labels (N,)."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)


def read_idx(path: str) -> np.ndarray:
  """Reads an idx file (optionally gzipped) as used by (Fashion-)MNIST."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f'{path} is not an unsigned-byte idx file.')
  shape = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(directory: str, stem: str) -> Optional[str]:
  for name in (stem, stem + '.gz'):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  return None


def load_fashion_mnist_idx(directory: str, split: str) -> ArraySource:
  """Fashion-MNIST from idx files: images (N, 28, 28, 1) uint8."""
  if split not in _IDX_FILES:
    raise ValueError(f"Fashion-MNIST idx split must be 'train' or 'test', "
                     f'got {split!r}.')
  paths = [_find(directory, stem) for stem in _IDX_FILES[split]]
  if None in paths:
    raise DatasetNotFoundError(_missing_fashion_mnist_message(directory))
  images, labels = (read_idx(p) for p in paths)
  return ArraySource(images[..., None], labels.astype(np.int32))


def _missing_fashion_mnist_message(directory):
  return (
      f'Fashion-MNIST not found: no idx files in {directory}. Either install '
      'the Debian package (`sudo apt-get install dataset-fashion-mnist`, which '
      f'puts them in {FASHION_MNIST_IDX_DIR}), or on a networked machine run '
      '`python -c "import tensorflow_datasets as tfds; '
      'tfds.load(\'fashion_mnist\')"` and set --config.dataset.source=tfds '
      '(and --config.dataset.data_dir if not ~/tensorflow_datasets).')


def uses_idx(dataset_config) -> bool:
  """Whether `dataset_config` reads the offline Fashion-MNIST idx files."""
  source = dataset_config.get('source', 'auto')
  if source not in ('auto', 'idx', 'tfds'):
    raise ValueError(f"dataset.source must be 'auto', 'idx' or 'tfds', got "
                     f'{source!r}.')
  if dataset_config.name != 'fashion_mnist':
    if source == 'idx':
      raise ValueError("dataset.source='idx' only exists for fashion_mnist.")
    return False
  if source == 'auto':
    return _find(dataset_config.idx_dir, _IDX_FILES['train'][0]) is not None
  return source == 'idx'


def load_arrays(dataset_config, split: str) -> ArraySource:
  """Loads a whole split into memory (small datasets: MNIST/CIFAR/STL scale)."""
  if uses_idx(dataset_config):
    return load_fashion_mnist_idx(dataset_config.idx_dir, split)
  try:
    data = tfds.as_numpy(tfds.load(
        dataset_config.name, split=split, batch_size=-1,
        data_dir=dataset_config.get('data_dir') or None,
        download=dataset_config.get('download', False)))
  except (tfds.core.registered.DatasetNotFoundError, AssertionError,
          FileNotFoundError) as e:
    extra = ''
    if dataset_config.name == 'fashion_mnist':
      extra = ' ' + _missing_fashion_mnist_message(dataset_config.idx_dir)
    raise DatasetNotFoundError(
        f'TFDS dataset {dataset_config.name!r} split {split!r} is not '
        f'available in data_dir={dataset_config.get("data_dir")!r}: {e}. '
        'Prepare it on a machine with network (tfds build '
        f'{dataset_config.name}) or set --config.dataset.download=True.'
        + extra) from e
  images = data['image']
  if images.ndim == 3:
    images = images[..., None]
  return ArraySource(images.astype(np.uint8), data['label'].astype(np.int32))


def _process_slice(global_batch: int, process_index: int, process_count: int):
  if global_batch % process_count:
    raise ValueError(f'batch_size={global_batch} is not divisible by the '
                     f'{process_count} processes.')
  local = global_batch // process_count
  return local, process_index * local


def pretrain_dataset(source: ArraySource, *, global_batch: int, seed: int,
                     image_size: int, view1, view2, mean, std,
                     start_step: int = 0, process_index: int = 0,
                     process_count: int = 1) -> tf.data.Dataset:
  """Endless stream of this process's slice of each global batch.

  Yields {'view1', 'view2': (local_batch, S, S, C) float32 normalised,
  'label': (local_batch,) int32}; processes take disjoint, contiguous slices
  of the same global batch, so together they see each global batch once.
  """
  local_batch, offset = _process_slice(global_batch, process_index,
                                       process_count)
  n = len(source)
  images = tf.constant(source.images)
  labels = tf.constant(source.labels)
  view1, view2 = dict(view1), dict(view2)

  def example(g):
    epoch = g // n
    index = tf.random.experimental.index_shuffle(
        g % n, tf.stack([tf.constant(seed, tf.int64), epoch]), n - 1)
    v1, v2 = augment.two_views(
        tf.gather(images, index), tf.stack([tf.constant(seed, tf.int64), g]),
        view1, view2, image_size)
    return {'view1': augment.normalize(v1, mean, std),
            'view2': augment.normalize(v2, mean, std),
            'label': tf.gather(labels, index)}

  positions = tf.data.Dataset.range(start_step, 2**62).flat_map(
      lambda step: tf.data.Dataset.range(step * global_batch + offset,
                                         step * global_batch + offset
                                         + local_batch))
  ds = positions.map(example, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_batches(source: ArraySource, *, global_batch: int, image_size: int,
                 mean, std, crop_fraction: float = 1.0, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-order batches covering every example exactly once.

  The last batch is zero-padded to full size; 'mask' is 1 for real examples
  and 0 for padding, so nothing is dropped or double counted.
  """
  local_batch, offset = _process_slice(global_batch, process_index,
                                       process_count)
  n = len(source)
  num_batches = -(-n // global_batch)
  padded = num_batches * global_batch
  index = np.arange(padded)
  mask = (index < n).astype(np.float32)
  images, labels = tf.constant(source.images), tf.constant(source.labels)
  index = np.minimum(index, n - 1)

  def prep(i, m):  # A whole batch at once: in-memory images share a size.
    image = augment.eval_preprocess(tf.gather(images, i), image_size,
                                    crop_fraction)
    return {'image': augment.normalize(image, mean, std),
            'label': tf.gather(labels, i), 'mask': m}

  # This process's slice of each global batch, in batch order.
  local = index.reshape(num_batches, global_batch)[:, offset:offset
                                                   + local_batch]
  local_mask = mask.reshape(num_batches, global_batch)[
      :, offset:offset + local_batch]
  ds = tf.data.Dataset.from_tensor_slices((local, local_mask))
  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def dataset_info(dataset_config) -> dict[str, Any]:
  """Image shape and class count, from config (checked against the data)."""
  return dict(image_shape=(dataset_config.image_size,
                           dataset_config.image_size,
                           dataset_config.num_channels),
              num_classes=dataset_config.num_classes)
