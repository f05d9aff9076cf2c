"""What a dataset says about itself, and the config fields it settles.

`resolve(dataset_config, train, eval)` runs after the sources are opened and
before anything is compiled. A field left unset is derived:
  num_classes  -1  -> the dataset's class count (TFDS metadata, the class
                      folders; 0 for unlabelled images: label monitors off),
  num_channels -1  -> the images' channels (a folder: 1 if every sampled
                      image is grey, else 3),
  image_size   -1  -> the images' fixed side (TFDS), or for a folder the
                      median shorter side of a sample, clamped to [32, 224],
  mean, std    ()  -> per-channel statistics of [0, 1] pixels over a fixed
                      sample of the training images (eval preprocessing).
A value that is set and contradicts the data is a ConfigError: a class
count other than the dataset's, or channels other than a TFDS / idx
dataset stores (a folder is converted to the channels asked for).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from absl import logging

from byol_jax import image_folder, input_pipeline, validation
from byol_jax.image_folder import FolderSource

# Images a derived image size or mean/std is computed from: the first
# STATS_SAMPLE of a fixed spread over the training split.
STATS_SAMPLE = 2000
IMAGE_SIZE_RANGE = (32, 224)


@dataclasses.dataclass(frozen=True)
class Facts:
  """num_classes: 0 when there are no labels. num_channels: as stored, or
  None where the source converts to any count (folders). image_size: the
  side every image has, or None (mixed sizes)."""
  num_classes: int
  num_channels: Optional[int]
  image_size: Optional[int]


def facts(source) -> Facts:
  if isinstance(source, FolderSource):
    return Facts(len(source.class_names), None, None)
  if isinstance(source, input_pipeline.StreamSource):
    shape = source.builder.info.features['image'].shape
    side = shape[0] if shape[0] is not None and shape[0] == shape[1] else None
    return Facts(input_pipeline.label_classes(source), shape[-1], side)
  h, w, c = source.images.shape[1:]
  return Facts(input_pipeline.label_classes(source), c,
               h if h == w else None)


def _sample_shapes(source, n: int = STATS_SAMPLE):
  """(height, width, grey) of the first n images of a fixed spread of
  `source`, decoded one at a time (photos are never all held at once)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if n < len(source):
    source = input_pipeline.take(source, n)
  if isinstance(source, FolderSource):
    images = image_folder.images_in_order(source)
  elif isinstance(source, input_pipeline.StreamSource):
    images = source.examples().map(lambda ex: ex['image'])
  else:
    images = tf.data.Dataset.from_tensor_slices(source.images)
  shapes = images.map(lambda x: (tf.shape(x)[0], tf.shape(x)[1], tf.reduce_all(
      x[..., :1] == x)), num_parallel_calls=tf.data.AUTOTUNE)
  return list(shapes.as_numpy_iterator())


def resolve(d, train, evaluation):
  """Fills the unset fields of `d` (config.dataset, changed in place) from
  the data and refuses set ones that contradict it (see the module
  docstring); logs what it derived. Returns (train, evaluation): folder
  sources decode to the channels settled here."""
  f = facts(train)
  classes = max(f.num_classes, facts(evaluation).num_classes)
  name = d.path or d.name
  if d.num_classes == -1:
    d.num_classes = classes
    logging.info('dataset.num_classes=%d, from %s.', classes, name)
  elif d.num_classes != classes:
    raise validation.ConfigError(
        f'dataset.num_classes={d.num_classes} but {name} has {classes} '
        f'classes; set --config.dataset.num_classes={classes} (or -1 to '
        'take it from the data).')
  sample = None
  if ((d.num_channels == -1 and f.num_channels is None)
      or (d.image_size == -1 and f.image_size is None)):
    sample = _sample_shapes(train)
  if d.num_channels == -1:
    if f.num_channels is not None:
      d.num_channels = f.num_channels
    else:
      d.num_channels = 1 if all(grey for _, _, grey in sample) else 3
    logging.info('dataset.num_channels=%d, from %s.', d.num_channels, name)
  elif f.num_channels is not None and f.num_channels != d.num_channels:
    raise validation.ConfigError(
        f'dataset.num_channels={d.num_channels} but {name} images have '
        f'{f.num_channels} channels; set --config.dataset.num_channels='
        f'{f.num_channels} (or -1 to take it from the data).')
  if d.image_size == -1:
    if f.image_size is not None:
      d.image_size = f.image_size
    else:
      side = int(np.median([min(h, w) for h, w, _ in sample]))
      d.image_size = int(np.clip(side, *IMAGE_SIZE_RANGE))
    logging.info('dataset.image_size=%d, from %s.', d.image_size, name)
  if isinstance(train, FolderSource):  # Decoded to the settled channels.
    train, evaluation = (dataclasses.replace(s, channels=d.num_channels)
                         for s in (train, evaluation))
  if not len(d.mean) or not len(d.std):
    mean, std = pixel_statistics(train, d)
    d.mean, d.std = tuple(map(float, mean)), tuple(map(float, std))
    logging.info('dataset.mean=%s, dataset.std=%s, from %d %s images.',
                 _fmt(mean), _fmt(std), min(len(train), STATS_SAMPLE), name)
  problems = []
  validation.check_dataset(lambda ok, msg: ok or problems.append(msg), d,
                           resolved=True)
  if problems:
    raise validation.ConfigError('Invalid config:\n  - ' +
                                 '\n  - '.join(problems))
  return train, evaluation


def pixel_statistics(source, d) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of the [0, 1] pixels of the first
  STATS_SAMPLE images of a fixed spread of `source`, each preprocessed as
  evaluation sees it (d.image_size, d.eval_crop_fraction)."""
  if len(source) > STATS_SAMPLE:
    source = input_pipeline.take(source, STATS_SAMPLE)
  channels = d.num_channels
  total = np.zeros(channels)
  square = np.zeros(channels)
  count = 0
  for batch in input_pipeline.eval_batches(
      source, global_batch=100, image_size=d.image_size,
      mean=(0.0,) * channels, std=(1.0,) * channels,
      crop_fraction=d.eval_crop_fraction):
    x = batch['image'][batch['mask'] > 0].astype(np.float64)
    total += x.sum(axis=(0, 1, 2))
    square += (x ** 2).sum(axis=(0, 1, 2))
    count += x.shape[0] * x.shape[1] * x.shape[2]
  mean = total / count
  std = np.sqrt(np.maximum(square / count - mean ** 2, 0))
  return np.round(mean, 4), np.round(np.maximum(std, 1e-3), 4)


def _fmt(values) -> str:
  return '(' + ', '.join(f'{v:.4f}' for v in values) + ')'
