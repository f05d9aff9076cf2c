"""tf.data input pipelines: two augmented views for pretraining, and
fixed-order, padded-and-masked batches for evaluation.

Sources: any TFDS image-classification dataset by name and split,
Fashion-MNIST read offline from the idx files of Debian's
`dataset-fashion-mnist` package, and a folder of your own images
(`dataset.path`, see `image_folder`). All feed the same pipeline code.

Determinism: the training stream is a function of (seed, step). Global
example position g = step * global_batch + i maps to epoch g // N and to
index `index_shuffle(g % N, seed=(seed, epoch))` (in-memory and folder
sources), and its
two views are drawn with the stateless seed (seed, g). A run resumed at step s
therefore sees exactly the batches an uninterrupted run sees from step s on.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import struct
from typing import Any, Iterator, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from byol_jax import augment, console, image_folder
from byol_jax.image_folder import FolderSource

FASHION_MNIST_IDX_DIR = '/usr/share/datasets/fashion-mnist'
_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


# The label names of Fashion-MNIST (Xiao et al., 2017), in label order.
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress',
                         'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                         'Ankle boot')


class DatasetNotFoundError(console.UserError, FileNotFoundError):
  """The configured dataset cannot be read on this machine."""


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A split held in memory: uint8 images (N, H, W, C) and int32 labels (N,);
  `num_classes` as the dataset declares it (None: max label + 1)."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: Optional[int] = None

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
  return ArraySource(images[..., None], labels.astype(np.int32), 10)


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
  source = dataset_config.source
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


@dataclasses.dataclass(frozen=True)
class StreamSource:
  """A TFDS split read lazily from its files (ImageNet scale)."""
  builder: Any
  split: str
  num_examples: int
  # Only these examples (by the dataset's 'file_name' feature), e.g. the
  # SimCLR 1% / 10% ImageNet subsets; None: the whole split.
  file_names: Optional[tuple[str, ...]] = None

  def __len__(self):
    return self.num_examples

  def take(self, n: int) -> 'StreamSource':
    """The first n examples (e.g. a kNN bank drawn from the train split)."""
    if self.file_names is not None:
      raise ValueError('take() of a file-name subset is not supported.')
    return StreamSource(self.builder, f'{self.split}[:{n}]', n)

  def examples(self, *, shuffle_seed: Optional[int] = None,
               process_index: int = 0, process_count: int = 1,
               decode: bool = True) -> tf.data.Dataset:
    """{'image': uint8 HWC, 'label': int32} of this process's shard; files
    in fixed order unless `shuffle_seed` is given. With decode=False images
    stay encoded (decode them with `decode_example`)."""
    shuffle = shuffle_seed is not None
    shard = tfds.even_splits(self.split, process_count,
                             drop_remainder=shuffle)[process_index]
    ds = self.builder.as_dataset(
        split=shard, shuffle_files=shuffle,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
        decoders={'image': tfds.decode.SkipDecoding()})
    if self.file_names is not None:
      keep = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
          tf.constant(self.file_names), tf.ones(len(self.file_names),
                                                tf.bool)), False)
      ds = ds.filter(lambda ex: keep.lookup(ex['file_name']))
    if not decode:
      return ds
    return ds.map(self.decode_example, num_parallel_calls=tf.data.AUTOTUNE)

  def shard_size(self, process_index: int, process_count: int) -> int:
    return _split_size(self.builder,
                       tfds.even_splits(self.split, process_count)[
                           process_index])

  def decode_example(self, example):
    feature = self.builder.info.features['image']
    image = example['image']
    if image.dtype == tf.string:
      image = feature.decode_example(image)
    if image.shape.rank == 2:
      image = image[..., None]
    return {'image': image, 'label': tf.cast(example['label'], tf.int32)}


def _split_size(builder, split: str) -> int:
  """Examples in a (sub)split, from the dataset's metadata or, where that
  lacks them (e.g. under tfds.testing.mock_data), by counting records."""
  try:
    return builder.info.splits[split].num_examples
  except KeyError:
    ds = builder.as_dataset(split=split,
                            decoders={'image': tfds.decode.SkipDecoding()})
    return int(ds.reduce(0, lambda n, _: n + 1))


def _builder(dataset_config):
  """The TFDS builder of dataset.name: a registered name, or the folder of
  a prepared dataset (the one holding dataset_info.json, e.g. written by
  `tfds build` or tfds.folder_dataset), read with
  tfds.builder_from_directory."""
  name = dataset_config.name
  if '/' not in name and not name.startswith('.'):
    return tfds.builder(name, data_dir=dataset_config.data_dir or None)
  if tf.io.gfile.exists(os.path.join(name, 'dataset_info.json')):
    return tfds.builder_from_directory(name)
  if tf.io.gfile.isdir(name):
    raise DatasetNotFoundError(
        f'dataset.name={name} is a folder but not a prepared TFDS dataset (no '
        'dataset_info.json in it). For a folder of images use '
        f'--config.dataset.path={name} (e.g. with configs/byol_folder.py); '
        'for a TFDS dataset give the folder that holds its dataset_info.json.')
  raise DatasetNotFoundError(f'dataset.name={name}: no such folder.')


def load_source(dataset_config, split: str):
  """The split as an `ArraySource` (in memory) or a `StreamSource` (read
  lazily; `dataset.in_memory=False`, for ImageNet-scale data), or the
  `FolderSource` of `dataset.path`."""
  if dataset_config.path:
    return _folder_split(dataset_config, split)
  if uses_idx(dataset_config):
    return load_fashion_mnist_idx(dataset_config.idx_dir, split)
  name = dataset_config.name
  try:
    builder = _builder(dataset_config)
    if dataset_config.download:
      builder.download_and_prepare()
    if not dataset_config.in_memory:
      return StreamSource(builder, split, _split_size(builder, split))
    chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(8192)))
    data = {k: np.concatenate([c[k] for c in chunks])
            for k in ('image', 'label')}
  except DatasetNotFoundError:
    raise  # Already says what to change.
  except (tfds.core.registered.DatasetNotFoundError, AssertionError,
          FileNotFoundError, KeyError, ValueError) as e:
    extra = ''
    if name == 'fashion_mnist':
      extra = ' ' + _missing_fashion_mnist_message(dataset_config.idx_dir)
    raise DatasetNotFoundError(
        f'TFDS dataset {name!r} split {split!r} is not available in '
        f'data_dir={dataset_config.get("data_dir") or "~/tensorflow_datasets"}'
        f' ({type(e).__name__}: {e}). Prepare it on a machine with network '
        f'(`tfds build {name}`) and point --config.dataset.data_dir at it, '
        'or set --config.dataset.download=True.' + extra) from e
  images = data['image']
  if images.ndim == 3:
    images = images[..., None]
  return ArraySource(images.astype(np.uint8), data['label'].astype(np.int32),
                     builder.info.features['label'].num_classes)


_FOLDERS = {}  # (path, labels, channels, in_memory) -> FolderSource.


def _folder_split(d, split: str) -> FolderSource:
  """dataset.path's images for `split` (d.train_split or d.eval_split):
  evaluation reads d.eval_path when it is set; otherwise, when the folder
  is labelled, a fixed d.eval_holdout fraction of it (by a hash of each
  path), which training then leaves out. Listed once per process."""
  def folder(path):
    # Channels not yet settled (-1): RGB until dataset_info.resolve says.
    channels = d.num_channels if d.num_channels > 0 else 3
    key = (path, d.labels, channels, d.in_memory)
    if key not in _FOLDERS:
      _FOLDERS[key] = image_folder.open_folder(
          path, labels=d.labels, channels=channels, in_memory=d.in_memory)
    return _FOLDERS[key]

  train = folder(d.path)
  evaluation = split != d.train_split
  if d.eval_path:
    if not evaluation:
      return train
    source = folder(d.eval_path)
    if train.labelled and source.class_names != train.class_names:
      raise image_folder.FolderError(
          f'dataset.eval_path={d.eval_path} has the classes '
          f'{list(source.class_names)}, dataset.path={d.path} '
          f'{list(train.class_names)}; give both the same class folders.')
    return source
  if not train.labelled or not d.eval_holdout:
    # Nothing to hold out: unlabelled images evaluate nothing.
    return train.subset([]) if evaluation else train
  held = image_folder.held_out(train, d.eval_holdout)
  return train.subset(np.flatnonzero(held == evaluation))


def class_balanced_subset(labels: np.ndarray, fraction: float,
                          seed: int) -> np.ndarray:
  """Sorted indices of round(fraction x n_c) (at least 1) examples of each
  class c, drawn with `seed`: the same labels, fraction and seed always give
  the same subset (semi-supervised fine-tuning on 1% / 10% of the labels)."""
  if not 0 < fraction <= 1:
    raise ValueError(f'fraction={fraction} must be in (0, 1].')
  rng = np.random.RandomState(seed)
  picked = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = max(1, int(round(fraction * len(members))))
    picked.append(rng.permutation(members)[:k])
  return np.sort(np.concatenate(picked))


def read_subset_file(path: str) -> tuple[str, ...]:
  """File names, one per line (the SimCLR ImageNet subset files
  1percent.txt / 10percent.txt, e.g. 'n01440764_10026.JPEG')."""
  if not os.path.exists(path):
    raise DatasetNotFoundError(
        f'Subset file {path} not found. The SimCLR ImageNet subsets are '
        'https://github.com/google-research/simclr/tree/master/imagenet_subsets'
        ' (1percent.txt, 10percent.txt).')
  with open(path) as f:
    names = tuple(sorted({line.strip() for line in f if line.strip()}))
  if not names:
    raise ValueError(f'Subset file {path} lists no file names.')
  return names


def labelled_subset(source, *, fraction: float = 1.0, seed: int = 0,
                    subset_file: str = ''):
  """The labelled examples of a semi-supervised protocol: those named in
  `subset_file`, or a class-balanced `fraction` drawn with `seed`."""
  if subset_file:
    if not isinstance(source, StreamSource):
      raise ValueError('subset.file needs a TFDS dataset with a file_name '
                       'feature read from files (dataset.in_memory=False); '
                       'use subset.fraction for in-memory datasets.')
    names = read_subset_file(subset_file)
    return dataclasses.replace(source, num_examples=len(names),
                               file_names=names)
  if fraction >= 1.0:
    return source
  if isinstance(source, StreamSource):
    raise ValueError(
        'A class-balanced subset.fraction of a streamed dataset would read '
        'every label first; give the subset as subset.file (e.g. SimCLR\'s '
        '1percent.txt), or load the dataset with dataset.in_memory=True.')
  return select(source, class_balanced_subset(source.labels, fraction, seed))


def holdout_split(labels: np.ndarray, n: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(kept, held-out) indices: about n examples, class-balanced and drawn
  with `seed`, held out (e.g. a validation split to pick an LR on)."""
  held = class_balanced_subset(labels, min(1.0, n / len(labels)), seed)
  return np.setdiff1d(np.arange(len(labels)), held), held


def hold_out(source, n: int, seed: int):
  """(kept, held-out) sources: `holdout_split` of an in-memory or folder
  source; of a streamed TFDS split, its first n examples (TFDS shuffles a
  split's examples when it writes the files) and the rest."""
  if isinstance(source, StreamSource):
    if '[' in source.split or source.file_names is not None:
      raise ValueError(
          f'Cannot hold examples out of the streamed split '
          f'{source.split!r}: give a whole split (e.g. train).')
    return (StreamSource(source.builder, f'{source.split}[{n}:]',
                         len(source) - n),
            StreamSource(source.builder, f'{source.split}[:{n}]', n))
  kept, held = holdout_split(source.labels, n, seed)
  return select(source, kept), select(source, held)


def select(source, index: np.ndarray):
  """The examples `index` of an in-memory or folder source."""
  if isinstance(source, FolderSource):
    return source.subset(index)
  return dataclasses.replace(source, images=source.images[index],
                             labels=source.labels[index])


def take(source, n: int):
  """The first n examples of a source."""
  if isinstance(source, StreamSource):
    return source.take(n)
  if isinstance(source, FolderSource):
    # Sorted files are grouped by class: a fixed spread, not the first n.
    pick = np.sort(np.random.RandomState(0).permutation(len(source))[:n])
    return source.subset(pick)
  return dataclasses.replace(source, images=source.images[:n],
                             labels=source.labels[:n])


def label_classes(source) -> int:
  """How many classes the labels of `source` need: the dataset's declared
  count for TFDS splits, max label + 1 for arrays held in memory."""
  if isinstance(source, StreamSource):
    return source.builder.info.features['label'].num_classes
  if isinstance(source, FolderSource):
    return len(source.class_names)
  if source.num_classes is not None:
    return source.num_classes
  return int(source.labels.max()) + 1 if len(source) else 0


def num_channels(source) -> int:
  if isinstance(source, StreamSource):
    return source.builder.info.features['image'].shape[-1]
  if isinstance(source, FolderSource):
    return source.channels
  return source.images.shape[-1]


def class_names(source, dataset_config) -> Optional[tuple[str, ...]]:
  """The names of the labels where the data has them: class folders, TFDS
  label names, Fashion-MNIST's; None otherwise."""
  if isinstance(source, FolderSource):
    return source.class_names or None
  if isinstance(source, StreamSource):
    return tuple(source.builder.info.features['label'].names) or None
  if dataset_config.name == 'fashion_mnist':
    return FASHION_MNIST_CLASSES
  return None


def describe(source, what: str) -> str:
  """'training: 60000 images in 10 classes'-like words for the log."""
  if isinstance(source, FolderSource):
    return image_folder.describe(source, what)
  return f'{what}: {len(source)} examples'


def first_images(source, n: int) -> np.ndarray:
  """The first n images as uint8 arrays (for looking at them)."""
  if isinstance(source, StreamSource):
    return np.stack([ex['image'] for ex in tfds.as_numpy(
        source.examples().take(n))])
  if isinstance(source, FolderSource):  # Sizes differ: a list.
    return list(image_folder.images_in_order(source, n).as_numpy_iterator())
  return source.images[:n]


def _process_slice(global_batch: int, process_index: int, process_count: int):
  if global_batch % process_count:
    raise ValueError(f'batch_size={global_batch} is not divisible by the '
                     f'{process_count} processes.')
  local = global_batch // process_count
  return local, process_index * local


def pretrain_dataset(source, *, view1, view2, **kwargs) -> tf.data.Dataset:
  """Endless stream of this process's slice of each global batch, as two
  augmented views: {'view1', 'view2': (local_batch, S, S, C) float32
  normalised, 'label': (local_batch,) int32}. Keyword arguments as
  `augmented_dataset`."""
  return augmented_dataset(source, views={'view1': view1, 'view2': view2},
                           **kwargs)


def labelled_dataset(source, *, view, **kwargs) -> tf.data.Dataset:
  """Endless stream of one augmented view per example, for supervised
  protocols (linear evaluation, fine-tuning): {'image', 'label'}. Keyword
  arguments as `augmented_dataset`."""
  return augmented_dataset(source, views={'image': view}, **kwargs)


def augmented_dataset(source, *, views: dict[str, dict], global_batch: int,
                      seed: int, image_size: int, mean, std,
                      start_step: int = 0, process_index: int = 0,
                      process_count: int = 1,
                      shuffle_buffer: int = 50_000,
                      crop_only: bool = False) -> tf.data.Dataset:
  """Endless stream of this process's slice of each global batch.

  Yields {name: (local_batch, S, S, C) float32 normalised for each entry of
  `views` (name -> view parameters, see `augment.PRESETS`), 'label':
  (local_batch,) int32}; processes take disjoint, contiguous slices of the
  same global batch, so together they see each global batch once. Example
  g's views are drawn from the stateless seed (seed, g), split per view.
  crop_only: yield only the random resized crops (float [0, 1], not
  normalised); the rest of each view runs on device (`device_augment`).
  """
  local_batch, offset = _process_slice(global_batch, process_index,
                                       process_count)
  views = {name: dict(params) for name, params in views.items()}
  seed64 = tf.constant(seed, tf.int64)

  def sample(image, label, g):
    # Per image: the crops and random draws (images may differ in size).
    seeds = augment.split_seed(tf.stack([seed64, g]), len(views))
    out = {name: augment.sample_view(image, s, params, image_size)
           for s, (name, params) in zip(seeds, views.items())}
    return {**out, 'label': label}

  def apply_views(batch):
    # Per batch: everything after the crop, each image with its own draws.
    if crop_only:
      out = {name: batch[name]['image'] for name in views}
    else:
      out = {name: augment.apply_view(batch[name], params, mean, std)
             for name, params in views.items()}
    return {**out, 'label': batch['label']}

  if isinstance(source, StreamSource):
    ds = _stream_examples(source, seed, shuffle_buffer, start_step,
                          global_batch, local_batch, offset, process_index,
                          process_count)
    def decode_views(g, encoded):
      example = source.decode_example(encoded)
      return sample(example['image'], example['label'], g)
    ds = ds.map(decode_views, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
  else:
    n = len(source)
    if not n:
      raise ValueError('The training split has no examples.')

    def shuffled(g, k=0):
      # The epoch's permutation; k > 0: the images after it (bad files).
      return tf.random.experimental.index_shuffle(
          (g + k) % n, tf.stack([seed64, g // n]), n - 1)

    positions = tf.data.Dataset.range(start_step, 2**62).flat_map(
        lambda step: tf.data.Dataset.range(step * global_batch + offset,
                                           step * global_batch + offset
                                           + local_batch))
    if isinstance(source, FolderSource):
      example = image_folder.decoded_example(source, shuffled)
      ds = positions.interleave(
          lambda g: example(g).map(lambda image, label: sample(image, label,
                                                               g)),
          cycle_length=16, num_parallel_calls=tf.data.AUTOTUNE,
          deterministic=True)
    else:
      images = tf.constant(source.images)
      labels = tf.constant(source.labels)

      def example(g):
        index = shuffled(g)
        return sample(tf.gather(images, index), tf.gather(labels, index), g)

      ds = positions.map(example, num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=True)
  # The batched ops run on chunks small enough to stay in a core's cache
  # (4 images at 224 px: 2x the rate of whole 64-image batches, measured in
  # docs/input_pipeline.md), then chunks are stacked into the local batch.
  first = next(iter(views))
  chunk = augment_chunk(local_batch, ds.element_spec[first]['image'].shape)
  ds = ds.batch(chunk, drop_remainder=True)
  ds = ds.map(apply_views, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  if chunk < local_batch:
    ds = ds.batch(local_batch // chunk, drop_remainder=True).map(
        lambda b: tf.nest.map_structure(
            lambda x: tf.reshape(x, [local_batch, *x.shape[2:]]), b))
  return ds.prefetch(tf.data.AUTOTUNE)


AUGMENT_CHUNK_BYTES = 5 * 2**19  # 2.5 MiB of float32 pixels per chunk.


def augment_chunk(local_batch: int, image_shape) -> int:
  """Images per batched-augmentation call: the largest divisor of the local
  batch whose float32 pixels fit in AUGMENT_CHUNK_BYTES (at least 1)."""
  per_image = 4 * int(np.prod(image_shape))
  cap = max(1, AUGMENT_CHUNK_BYTES // per_image)
  return max(d for d in range(1, min(cap, local_batch) + 1)
             if local_batch % d == 0)


def _stream_examples(source, seed, shuffle_buffer, start_step, global_batch,
                     local_batch, offset, process_index, process_count):
  """(global position g, encoded example) pairs of a file-backed split, in
  an order that is a function of (seed, epoch); images stay encoded here
  (decoded in parallel after). Resuming costs at most one file plus one
  shuffle window, whatever the step (`_positional_records`); a split whose
  files cannot be addressed (not TFRecord, a file-name subset, mock data)
  re-reads the consumed records instead."""
  start = start_step * local_batch  # Examples this process has consumed.
  files = _file_instructions(source, process_index, process_count)
  if files is not None:
    ds = _positional_records(source, files, seed, shuffle_buffer, start)
  else:
    ds = source.examples(shuffle_seed=seed, process_index=process_index,
                         process_count=process_count, decode=False)
    ds = ds.repeat().shuffle(shuffle_buffer, seed=seed,
                             reshuffle_each_iteration=True).skip(start)
  ds = ds.enumerate(start=start)

  def position(j, example):
    return (j // local_batch) * global_batch + offset + j % local_batch, example
  return ds.map(position)


def _file_instructions(source, process_index, process_count):
  """[(path, skip, take)] of this process's shard of the split (TFDS's
  even split, remainder dropped), or None where records cannot be
  addressed by file and offset."""
  builder = source.builder
  if (source.file_names is not None
      or 'tfrecord' not in str(getattr(builder.info, 'file_format',
                                       'tfrecord')).lower()):
    return None
  shard = tfds.even_splits(source.split, process_count,
                           drop_remainder=True)[process_index]
  try:
    instructions = builder.info.splits[shard].file_instructions
  except (KeyError, ValueError, AttributeError):
    return None
  files = [(str(f.filename), int(f.skip), int(f.take)) for f in instructions
           if f.take]
  if not files or not tf.io.gfile.exists(files[0][0]):
    return None
  return files


def _positional_records(source, files, seed, window, start):
  """Endless encoded examples of this process's files; epoch e reads the
  files in the order index_shuffle(., (seed, e)), each from its first
  record, and permutes each run of `window` consecutive records with a
  seed folded from (seed, e, window index) (as a shuffle buffer does,
  but a function of the position). Example j of the stream is thus found
  without reading the ones before it: epoch j // N, window
  (j % N) // window; reading starts at that window's first record (at
  most one file is skipped into) and drops the records of the window
  before j."""
  paths = tf.constant([f for f, _, _ in files])
  skips = tf.constant([s for _, s, _ in files], tf.int64)
  takes = tf.constant([n for _, _, n in files], tf.int64)
  num_files = len(files)
  n = sum(k for _, _, k in files)
  window = max(1, min(window, n))
  seed64 = tf.constant(seed, tf.int64)
  parse = functools.partial(source.builder.info.features.deserialize_example,
                            decoders={'image': tfds.decode.SkipDecoding()})

  def epoch(e, first_window):
    """Records of epoch e from window `first_window` on, windows permuted."""
    order = tf.random.experimental.index_shuffle(
        tf.range(num_files, dtype=tf.int64), tf.stack([seed64, e]),
        num_files - 1)
    counts = tf.gather(takes, order)
    ends = tf.cumsum(counts)
    begin = first_window * window  # Record of the epoch reading starts at.
    k0 = tf.searchsorted(ends, tf.reshape(begin, [1]), side='right',
                         out_type=tf.int64)[0]
    into = begin - (ends[k0] - counts[k0])

    def read(k):
      f = tf.gather(order, k)
      extra = tf.where(k == k0, into, tf.constant(0, tf.int64))
      return tf.data.TFRecordDataset(tf.gather(paths, f)).skip(
          tf.gather(skips, f) + extra).take(tf.gather(takes, f) - extra)

    records = tf.data.Dataset.range(k0, num_files).flat_map(read)

    def permute(w, batch):
      key = tf.random.experimental.stateless_fold_in(
          tf.stack([seed64, e]), w)
      perm = tf.random.experimental.stateless_shuffle(
          tf.range(tf.shape(batch, out_type=tf.int64)[0]), key)
      return tf.gather(batch, perm)

    # prefetch: the next window is read while this one is consumed.
    return records.batch(window).prefetch(1).enumerate(
        start=first_window).map(permute).unbatch()

  e0, r0 = divmod(start, n)
  first = epoch(tf.constant(e0, tf.int64), tf.constant(r0 // window,
                                                        tf.int64))
  first = first.skip(r0 % window)
  rest = tf.data.Dataset.range(e0 + 1, 2**62).flat_map(
      lambda e: epoch(e, tf.constant(0, tf.int64)))
  return first.concatenate(rest).map(parse,
                                     num_parallel_calls=tf.data.AUTOTUNE)


def eval_batches(source: ArraySource, *, global_batch: int, image_size: int,
                 mean, std, crop_fraction: float = 1.0, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Fixed-order batches covering every example exactly once.

  The last batch is zero-padded to full size; 'mask' is 1 for real examples
  and 0 for padding, so nothing is dropped or double counted.
  """
  local_batch, offset = _process_slice(global_batch, process_index,
                                       process_count)
  if isinstance(source, StreamSource):
    return _stream_eval_batches(source, local_batch, image_size, mean, std,
                                crop_fraction, process_index, process_count)
  if isinstance(source, FolderSource):
    return _folder_eval_batches(source, global_batch, local_batch, offset,
                                image_size, mean, std, crop_fraction)
  n = len(source)
  num_batches = -(-n // global_batch)
  padded = num_batches * global_batch
  index = np.arange(padded)
  mask = (index < n).astype(np.float32)
  index = np.minimum(index, n - 1)
  images, labels = tf.constant(source.images), tf.constant(source.labels)

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


def _folder_eval_batches(source, global_batch, local_batch, offset,
                         image_size, mean, std, crop_fraction):
  """As the in-memory case, one file at a time (sizes differ); a file that
  cannot be decoded becomes padding (mask 0, logged and counted), so every
  process still yields the same number of batches."""
  n = len(source)
  num_batches = max(-(-n // global_batch), 1)
  index = np.arange(num_batches * global_batch).reshape(num_batches,
                                                        global_batch)
  local = index[:, offset:offset + local_batch].reshape(-1)
  read = source.reader()
  blank = {'image': tf.zeros([image_size, image_size, source.channels]),
           'label': tf.constant(-1, tf.int32), 'mask': tf.constant(0.0)}

  def real(i):
    data, label, _ = read(i)
    image = augment.eval_preprocess(source.decode(data), image_size,
                                    crop_fraction)
    image = tf.ensure_shape(image, [image_size, image_size, source.channels])
    return {'image': augment.normalize(image, mean, std), 'label': label,
            'mask': tf.constant(1.0)}

  def padding(i):  # Past the end, or a file that failed to decode.
    def note():
      return tf.numpy_function(image_folder.note_unreadable, [read(i)[2]],
                               tf.int64, stateful=True)
    noted = tf.cond(i < n, note, lambda: tf.constant(0, tf.int64))
    with tf.control_dependencies([noted]):
      return tf.nest.map_structure(tf.identity, blank)

  def one(i):
    first = tf.data.Dataset.from_tensors(i).filter(lambda i: i < n)
    return first.map(real).ignore_errors().concatenate(
        tf.data.Dataset.from_tensors(i).map(padding)).take(1)

  ds = tf.data.Dataset.from_tensor_slices(local)
  if n:
    ds = ds.interleave(one, cycle_length=16,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = ds.map(lambda i: blank)
  return ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()


def _stream_eval_batches(source, local_batch, image_size, mean, std,
                         crop_fraction, process_index, process_count):
  """Each process reads its contiguous shard in order; every process yields
  the same number of batches, padding (mask 0) after its last example."""
  sizes = [source.shard_size(i, process_count) for i in range(process_count)]
  num_batches = -(-max(sizes) // local_batch)
  pad = num_batches * local_batch - sizes[process_index]

  def prep(example):
    image = augment.eval_preprocess(example['image'], image_size,
                                    crop_fraction)
    image = tf.ensure_shape(image, [image_size, image_size, None])
    return {'image': augment.normalize(image, mean, std),
            'label': example['label'], 'mask': tf.constant(1.0)}

  ds = source.examples(process_index=process_index,
                       process_count=process_count)
  ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  filler = ds.take(1).map(lambda ex: {**ex, 'mask': tf.constant(0.0)})
  ds = ds.concatenate(filler.repeat(pad))
  return ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
