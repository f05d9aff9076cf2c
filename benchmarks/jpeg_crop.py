r"""The official crop on JPEG files: decode only each view's window
(tf.io.decode_and_crop_jpeg, as byol/utils/dataset.py does) vs. decode the
whole image once and slice both windows, side by side in one run.

  make bench-jpeg-crop      # or: PYTHONPATH=. .venv/bin/python benchmarks/jpeg_crop.py

ImageNet-sized photos (500x375, quality 90, from smooth random fields),
two views of the official crop each resized to 224 px (bicubic) per image,
one tf.data thread; rates are images per second, alternating the two ways
over several rounds (the machine is shared: compare the ratio, not the
rates).
"""

import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from byol_jax import augment  # noqa: E402


def _photos(n, h=375, w=500):
  rng = np.random.RandomState(0)
  out = []
  for _ in range(n):
    small = rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32)
    img = tf.cast(tf.image.resize(small[None], (h, w), 'bicubic')[0]
                  .numpy().clip(0, 255), tf.uint8)
    out.append(tf.io.encode_jpeg(img, quality=90).numpy())
  return out


def _rate(jpegs, partial: bool, size: int, seconds: float) -> float:
  def views(i, data):
    seeds = augment.split_seed(tf.stack([tf.constant(0, tf.int64), i]), 2)
    if not partial:  # What the pipeline does.
      image = tf.io.decode_jpeg(data, channels=3)
      return [augment.random_resized_crop(image, s, size, impl='official')
              for s in seeds]
    out = []  # What the official code does: decode each crop's window.
    for s in seeds:
      window = augment.official_crop_window(tf.image.extract_jpeg_shape(data),
                                            augment.split_seed(s, 1)[0])
      crop = tf.io.decode_and_crop_jpeg(data, window, channels=3)
      crop = tf.image.resize(crop[None], (size, size), 'bicubic')[0] / 255.0
      out.append(tf.clip_by_value(crop, 0.0, 1.0))
    return out
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  ds = tf.data.Dataset.from_tensor_slices(jpegs).enumerate().repeat().map(
      views).with_options(options)
  it = iter(ds)
  for _ in range(20):  # Warm-up: tracing, first allocations.
    next(it)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(it)
    n += 1
  return n / (time.perf_counter() - start)


def main():
  from byol_jax import conv_autotune  # pylint: disable=g-import-not-at-top
  print(f'Measured on {conv_autotune.machine()}.')
  parser = argparse.ArgumentParser()
  parser.add_argument('--seconds', type=float, default=5.0)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--images', type=int, default=64)
  args = parser.parse_args()
  jpegs = _photos(args.images)
  cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
              if line.startswith('model name')), platform.processor())
  print(f'CPU: {cpu}; {args.images} JPEGs of 500x375, two 224 px official '
        'crops each, 1 thread')
  print(f'{"round":>5s} {"full decode":>12s} {"window only":>12s} '
        f'{"ratio":>6s}')
  ratios = []
  for r in range(args.rounds):
    full = _rate(jpegs, False, 224, args.seconds)
    part = _rate(jpegs, True, 224, args.seconds)
    ratios.append(part / full)
    print(f'{r:5d} {full:12.1f} {part:12.1f} {part / full:6.2f}')
  print(f'median ratio (window only / full decode): {np.median(ratios):.2f}')


if __name__ == '__main__':
  main()
