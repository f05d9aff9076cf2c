r"""Two-view augmentation throughput: our tf.data pipeline vs. a per-image
PIL implementation of the same BYOL recipe, side by side in one run.

  .venv/bin/python benchmarks/input_pipeline.py [--seconds=10]

The reference follows the torchvision-style `BYOLAugmentation` of the seed
tutorial (../shared/seeds/000_*.txt) op for op, with PIL only (torchvision's
transforms are PIL calls underneath): RandomResizedCrop (bicubic), flip,
ColorJitter(0.4, 0.4, 0.2, 0.1) p=0.8 in random order, grayscale p=0.2,
Gaussian blur (p=1.0 / 0.1, kernel ~10% of the side), solarize (p=0 / 0.2).
Both sides produce float32 normalised views of two crops per image from
uint8 sources (256x256 -> 224, 32x32 -> 32). Rates are two-view images per
second per core: tf.data is pinned to one thread, the reference runs on one.
"""

import argparse
import math
import random
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
import tensorflow as tf

from byol_jax import augment, input_pipeline

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PILByolAugmentation:
  """Per-image reference implementation (one random draw per image)."""

  def __init__(self, size, view1, view2):
    self.size, self.views = size, (view1, view2)

  def _crop(self, img, p):
    w, h = img.size
    for _ in range(10):
      area = w * h * random.uniform(*p['crop_area'])
      log_r = (math.log(p['crop_aspect'][0]), math.log(p['crop_aspect'][1]))
      ratio = math.exp(random.uniform(*log_r))
      cw, ch = int(round(math.sqrt(area * ratio))), int(round(
          math.sqrt(area / ratio)))
      if 0 < cw <= w and 0 < ch <= h:
        x, y = random.randint(0, w - cw), random.randint(0, h - ch)
        return img.resize((self.size, self.size), Image.BICUBIC,
                          box=(x, y, x + cw, y + ch))
    side = min(w, h)
    x, y = (w - side) // 2, (h - side) // 2
    return img.resize((self.size, self.size), Image.BICUBIC,
                      box=(x, y, x + side, y + side))

  @staticmethod
  def _hue(img, delta):
    h, s, v = img.convert('HSV').split()
    h = h.point(lambda x: (x + int(delta * 255)) % 256)
    return Image.merge('HSV', (h, s, v)).convert('RGB')

  def _jitter(self, img, p):
    ops = [
        lambda x: ImageEnhance.Brightness(x).enhance(
            random.uniform(1 - p['brightness'], 1 + p['brightness'])),
        lambda x: ImageEnhance.Contrast(x).enhance(
            random.uniform(1 - p['contrast'], 1 + p['contrast'])),
        lambda x: ImageEnhance.Color(x).enhance(
            random.uniform(1 - p['saturation'], 1 + p['saturation'])),
        lambda x: self._hue(x, random.uniform(-p['hue'], p['hue'])),
    ]
    random.shuffle(ops)
    for op in ops:
      img = op(img)
    return img

  def view(self, img, p):
    img = self._crop(img, p)
    if random.random() < p['flip_prob']:
      img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if random.random() < p['jitter_prob']:
      img = self._jitter(img, p)
    if random.random() < p['grayscale_prob']:
      img = img.convert('L').convert('RGB')
    if random.random() < p['blur_prob']:
      img = img.filter(ImageFilter.GaussianBlur(random.uniform(
          *p['blur_sigma'])))
    if random.random() < p['solarize_prob']:
      img = ImageOps.solarize(img, 128)
    x = np.asarray(img, np.float32) / 255.0
    return (x - MEAN) / STD

  def __call__(self, array):
    img = Image.fromarray(array)
    return tuple(self.view(img, p) for p in self.views)


def rate_pil(images, size, views, seconds):
  aug = PILByolAugmentation(size, *views)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    aug(images[n % len(images)])
    n += 1
  return n / (time.perf_counter() - start)


def rate_tfdata(images, size, views, seconds, threads=1):
  source = input_pipeline.ArraySource(images,
                                      np.zeros(len(images), np.int32))
  ds = input_pipeline.pretrain_dataset(
      source, global_batch=64, seed=0, image_size=size, view1=views[0],
      view2=views[1], mean=MEAN, std=STD)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.autotune.cpu_budget = threads
  it = ds.with_options(options).as_numpy_iterator()
  next(it)  # trace
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    n += len(next(it)['label'])
  return n / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=10.0)
  args = parser.parse_args()
  # One core for TF's own op kernels too, so the rates are per core.
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  rng = np.random.RandomState(0)
  cases = [('224x224 (from 256x256)', 256, 224, 'byol_imagenet'),
           ('32x32', 32, 32, 'byol_small')]
  print(f'{"case":26s}{"tf.data img/s/core":>20s}{"PIL img/s/core":>16s}'
        f'{"ratio":>8s}')
  for name, src, size, preset in cases:
    images = rng.randint(0, 256, (64, src, src, 3)).astype(np.uint8)
    views = augment.preset(preset)
    ours = rate_tfdata(images, size, views, args.seconds)
    ref = rate_pil(images, size, views, args.seconds)
    print(f'{name:26s}{ours:20.1f}{ref:16.1f}{ours / ref:8.2f}x')


if __name__ == '__main__':
  main()
