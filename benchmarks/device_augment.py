r"""On-device augmentation (`augment.on_device=True`) against the tf.data
path, side by side in one run.

  make bench-device-augment     # = PYTHONPATH=. .venv/bin/python \
                                #   benchmarks/device_augment.py [--seconds=10]

Three rates of two-view images per second, for BYOL's ImageNet views at
224 px (from 256x256 uint8 sources) and its 32-px views:
- host, tf.data, everything (the default path), one thread;
- host, tf.data, crops only (what the host still does with on_device);
- device, `device_augment.augment_batch` for both views of a batch of 64,
  jitted, on JAX's default backend (this machine's CPU; a GPU/TPU where
  there is one).
and the ratios: how many times more images one host core can feed with
on_device, and the device time the finishing adds per image. On a CPU-only
machine both halves share the same cores: on_device only moves the work.
"""

import os
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from byol_jax import augment, device_augment, input_pipeline

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def rate_host(images, size, views, seconds, crop_only, threads=1):
  source = input_pipeline.ArraySource(images, np.zeros(len(images), np.int32))
  ds = input_pipeline.pretrain_dataset(
      source, global_batch=64, seed=0, image_size=size, view1=views[0],
      view2=views[1], mean=MEAN, std=STD, crop_only=crop_only)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.autotune.cpu_budget = threads
  it = ds.with_options(options).as_numpy_iterator()
  next(it)  # Trace.
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    n += len(next(it)['label'])
  return n / (time.perf_counter() - start)


def rate_device(size, views, seconds, batch=64):
  @jax.jit
  def finish(key, v1, v2):
    idx = jnp.arange(batch)
    k1, k2 = jax.random.split(key)
    return (device_augment.augment_batch(k1, v1, idx, views[0], MEAN, STD),
            device_augment.augment_batch(k2, v2, idx, views[1], MEAN, STD))

  crops = jax.random.uniform(jax.random.key(0), (2, batch, size, size, 3))
  key = jax.random.key(1)
  jax.block_until_ready(finish(key, crops[0], crops[1]))  # Compile.
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    key, sub = jax.random.split(key)
    jax.block_until_ready(finish(sub, crops[0], crops[1]))
    n += batch
  return n / (time.perf_counter() - start)


def main():
  from byol_jax import conv_autotune  # pylint: disable=g-import-not-at-top
  print(f'Measured on {conv_autotune.machine()}.')
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=10.0)
  args = parser.parse_args()
  rng = np.random.RandomState(0)
  print(f'JAX backend: {jax.default_backend()} ({jax.devices()[0]})')
  print('| views | host: tf.data all | host: crops only | host ratio | '
        'device: finish both views | device us/img |')
  print('|---|---|---|---|---|---|')
  for preset, src, size in (('byol_imagenet', 256, 224),
                            ('byol_small', 32, 32)):
    views = augment.preset(preset)
    images = rng.randint(0, 256, (64, src, src, 3)).astype(np.uint8)
    full = rate_host(images, size, views, args.seconds, crop_only=False)
    crops = rate_host(images, size, views, args.seconds, crop_only=True)
    device = rate_device(size, views, args.seconds)
    print(f'| {preset} {size}px | {full:.0f} img/s | {crops:.0f} img/s | '
          f'{crops / full:.2f}x | {device:.0f} img/s | {1e6 / device:.0f} |',
          flush=True)


if __name__ == '__main__':
  main()
