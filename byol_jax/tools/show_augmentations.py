r"""Writes a PNG grid of originals and their two augmented views.

  python -m byol_jax.tools.show_augmentations \
      --config=configs/byol_fashion_mnist.py --out=views.png
  # A folder of your own images:
  python -m byol_jax.tools.show_augmentations \
      --config=configs/byol_folder.py --config.dataset.path=/data/my_images
  # Any image file, with a 224-px config:
  python -m byol_jax.tools.show_augmentations \
      --config=configs/byol_imagenet.py --image=photo.jpg --out=views.png

Rows: original, view 1, view 2 -- drawn exactly as the training pipeline
draws them (same ops, same config, stateless seeds). Look at this before
spending a TPU-day.
"""

import os
import sys

from absl import flags
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from byol_jax import augment, console, dataset_info, input_pipeline

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when the command runs, so importing this module (tests,
  notebooks, the other commands) adds no flags."""
  config_flags.DEFINE_config_file('config', None, 'Config file.')
  flags.DEFINE_string('out', 'views.png', 'Output PNG path.')
  flags.DEFINE_integer('num', 8, 'Number of examples (columns).')
  flags.DEFINE_string(
      'image', None, 'Augment this image file (num times) instead of the '
      "config's training split.")
  flags.mark_flags_as_required(['config'])


def make_grid(images: np.ndarray, config, seed: int = 0) -> np.ndarray:
  """(3, N, S, S, C) floats in [0, 1]: originals (eval view), view 1, view 2."""
  d = config.dataset
  rows = [[], [], []]
  for i, image in enumerate(images):
    image = tf.constant(image)
    original = augment.eval_preprocess(image, d.image_size,
                                       d.eval_crop_fraction)
    v1, v2 = augment.two_views(
        image, tf.constant([seed, i], tf.int64),
        config.augment.view1.to_dict(), config.augment.view2.to_dict(),
        d.image_size)
    for row, x in zip(rows, (original, v1, v2)):
      row.append(x.numpy())
  return np.asarray(rows)


def save_grid(grid: np.ndarray, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n_rows, n_cols = grid.shape[:2]
  fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                           figsize=(1.6 * n_cols, 1.7 * n_rows))
  for r, name in enumerate(('original', 'view 1', 'view 2')):
    for c in range(n_cols):
      ax = axes[r, c]
      img = grid[r, c]
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img,
                cmap='gray' if img.shape[-1] == 1 else None, vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(name)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  config = FLAGS.config
  d = config.dataset
  if FLAGS.image:
    image = tf.io.decode_image(tf.io.read_file(FLAGS.image),
                               channels=max(d.num_channels, 0),
                               expand_animations=False).numpy()
    if d.image_size == -1:
      d.image_size = int(np.clip(min(image.shape[:2]),
                                 *dataset_info.IMAGE_SIZE_RANGE))
    images = np.stack([image] * FLAGS.num)
    source = os.path.basename(FLAGS.image)
  else:
    data = input_pipeline.load_source(d, d.train_split)
    data, _ = dataset_info.resolve(d, data, data)  # Unset fields: the data's.
    # A spread over the split (a folder lists its classes in order).
    images = input_pipeline.first_images(
        input_pipeline.take(data, min(FLAGS.num, len(data))), FLAGS.num)
    source = d.path or f'{d.name}/{d.train_split}'
  grid = make_grid(images, config, seed=config.seed)
  save_grid(grid, FLAGS.out,
            f'{source}, augment preset {config.augment.get("preset", "?")}')
  print(f'Wrote {FLAGS.out}')


def run():
  """Console-script entry point (`byol-jax-show-augmentations`)."""
  _define_flags()
  console.run(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
