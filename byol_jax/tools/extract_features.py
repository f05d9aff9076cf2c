r"""Encoder features of a dataset split, for use outside byol_jax.

  python -m byol_jax.tools.extract_features \
      --checkpoint=runs/byol_fashion_mnist --dataset=fashion_mnist \
      --split=test --out=feats.npy
  python -m byol_jax.tools.extract_features --checkpoint=pretrain_res50x1.pkl \
      --dataset=imagenet2012 --split=validation --out=val_feats.npy \
      --data_dir=/data/tfds

Writes `--out` (N, F) float32 (BatchNorm in inference mode, the eval view:
centre crop for ImageNet, the whole image for small datasets) and the labels
beside it (feats_labels.npy), in the split's order. Never replaces existing
files.
"""

import os
import sys

import jax
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from byol_jax import (cli, config_lib, console, input_pipeline, networks,
                      parallel, pretrained)
from byol_jax.evaluation import features

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when the command runs, so importing this module (tests,
  notebooks, the other commands) adds no flags."""
  flags.DEFINE_string(
      'checkpoint', None, 'Pretraining workdir or step directory, or an '
      'official BYOL .pkl file.')
  flags.DEFINE_string(
      'dataset', 'fashion_mnist', 'fashion_mnist, cifar10, or any TFDS name '
      '(ImageNet-style preprocessing at 224 px).')
  flags.DEFINE_string('split', 'test', 'Dataset split.')
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir.')
  flags.DEFINE_string(
      'idx_dir', '/usr/share/datasets/fashion-mnist', 'Fashion-MNIST idx files '
      '(apt-get install dataset-fashion-mnist).')
  flags.DEFINE_string('out', None, 'Output .npy path for features.')
  flags.DEFINE_integer('batch_size', 256, 'Images per batch (a '
                       'multiple of the device count).')
  flags.mark_flags_as_required(['checkpoint', 'out'])


def dataset_config(name: str, data_dir: str = '', idx_dir: str = ''):
  """The dataset fields our configs use for `name`."""
  c = config_lib.base_config()
  if name in config_lib.DATASETS:
    config_lib.use_dataset(c, name)
  else:
    c.dataset.name = name
  c.dataset.data_dir = data_dir
  if idx_dir:
    c.dataset.idx_dir = idx_dir
  c.dataset.in_memory = name in config_lib.DATASETS
  return c.dataset


def extract_features(checkpoint: str, dataset, split: str,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(features (N, F) float32, labels (N,)) of every example of `split`."""
  net = pretrained.load(checkpoint)
  variables = jax.device_get(net.encoder_variables)
  mesh = parallel.make_mesh()
  encoder = networks.build_encoder(net.model, compute_dtype='float32')
  embed = features.make_embed_fn(encoder, mesh)
  source = input_pipeline.load_source(dataset, split)
  batches = input_pipeline.eval_batches(
      source, global_batch=batch_size, image_size=dataset.image_size,
      mean=dataset.mean, std=dataset.std,
      crop_fraction=dataset.eval_crop_fraction,
      process_index=jax.process_index(), process_count=jax.process_count())
  variables = jax.device_put(variables, NamedSharding(mesh, P()))
  out = features.extract(embed, variables, batches)
  return out['embedding'].astype(np.float32), out['label']


def main(argv):
  del argv
  cli.setup()
  # np.save appends .npy: check the names that will really be written.
  out = FLAGS.out if FLAGS.out.endswith('.npy') else FLAGS.out + '.npy'
  labels_path = out[:-len('.npy')] + '_labels.npy'
  for path in (out, labels_path):
    if os.path.lexists(path):  # A dangling symlink too.
      raise app.UsageError(f'{path} exists; choose another --out.')
  if FLAGS.batch_size % jax.device_count():
    raise app.UsageError(f'--batch_size={FLAGS.batch_size} is not divisible by '
                         f'the {jax.device_count()} devices.')
  feats, labels = extract_features(
      FLAGS.checkpoint,
      dataset_config(FLAGS.dataset, FLAGS.data_dir, FLAGS.idx_dir),
      FLAGS.split, FLAGS.batch_size)
  if jax.process_index() == 0:
    np.save(out, feats)
    np.save(labels_path, labels)
    print(f'Wrote {feats.shape} features to {out} and labels to '
          f'{labels_path}')


def run():
  """Console-script entry point (`byol-jax-extract-features`)."""
  _define_flags()
  console.run(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
