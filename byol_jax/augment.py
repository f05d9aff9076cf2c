"""BYOL / SimSiam image augmentations as stateless TensorFlow ops.

Every op takes an explicit `seed` (a shape-[2] int tensor), so the same
(seed, image) always gives the same output, eagerly or inside tf.data, and a
resumed run sees exactly the views an uninterrupted one would have seen.
Images are float32 in [0, 1], HWC, with 1 (grayscale) or 3 channels; the
colour ops that need 3 channels (saturation, hue, grayscale) are identities
on 1-channel images, in training and evaluation alike.

The augmentation parameters of every preset live in `PRESETS` below
(BYOL paper Table 6 / spec.md).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import tensorflow as tf

# One view's parameters. Probabilities are per image; each image gets its own
# draw (a batch-shared draw is a known bug in one PyTorch peer).
_BYOL_VIEW = dict(
    crop_area=(0.08, 1.0), crop_aspect=(3 / 4, 4 / 3), flip_prob=0.5,
    jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
    grayscale_prob=0.2, blur_prob=1.0, blur_sigma=(0.1, 2.0),
    solarize_prob=0.0)


def _view(base, **overrides):
  return {**base, **overrides}


_SIMSIAM_VIEW = _view(_BYOL_VIEW, crop_area=(0.2, 1.0), saturation=0.4,
                      blur_prob=0.5)

# name -> (view 1, view 2).
PRESETS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # BYOL, 224x224 ImageNet: blur always / rarely, solarize only in view 2.
    'byol_imagenet': (_BYOL_VIEW, _view(_BYOL_VIEW, blur_prob=0.1,
                                        solarize_prob=0.2)),
    # 32x32 and 28x28 data (solo-learn, lightly): no blur.
    'byol_small': (_view(_BYOL_VIEW, blur_prob=0.0),
                   _view(_BYOL_VIEW, blur_prob=0.0, solarize_prob=0.2)),
    # The CPU demo (28x28 grayscale, two epochs): BYOL's small-image recipe
    # with mild crops. On Fashion-MNIST the silhouette carries the class and
    # two epochs cannot learn the part-to-whole prediction that 8%-area crops
    # ask for; measured in docs/cpu_demo.md.
    'byol_fashion_mnist': (
        _view(_BYOL_VIEW, blur_prob=0.0, crop_area=(0.8, 1.0)),
        _view(_BYOL_VIEW, blur_prob=0.0, crop_area=(0.8, 1.0),
              solarize_prob=0.2)),
    # SimSiam: the same recipe for both views.
    'simsiam_imagenet': (_SIMSIAM_VIEW, _SIMSIAM_VIEW),
    'simsiam_small': (_view(_SIMSIAM_VIEW, blur_prob=0.0),
                      _view(_SIMSIAM_VIEW, blur_prob=0.0)),
}


def preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
  if name not in PRESETS:
    raise ValueError(f'unknown augmentation preset {name!r}; choose one of '
                     f'{sorted(PRESETS)}')
  return tuple(dict(v) for v in PRESETS[name])


def split_seed(seed, num: int):
  """`num` independent stateless seeds derived from `seed`."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform(seed, minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform([], seed, minval, maxval)


def _maybe(seed, prob: float, fn, image):
  """Applies `fn` with probability `prob` (static 0 / 1 skip the draw)."""
  if prob <= 0:
    return image
  if prob >= 1:
    return fn(image)
  return tf.cond(_uniform(seed) < prob, lambda: fn(image), lambda: image)


def random_resized_crop(image, seed, size: int, area=(0.08, 1.0),
                        aspect=(3 / 4, 4 / 3), max_attempts: int = 10):
  """Crop of random area fraction and aspect ratio, resized bicubically.

  Retries up to `max_attempts` times; if none fits, falls back to the
  centre square crop (the official code's fallback).
  """
  shape = tf.shape(image)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0., 0., 1., 1.], shape=[1, 1, 4]),
      seed=seed, min_object_covered=0.0, aspect_ratio_range=aspect,
      area_range=area, max_attempts=max_attempts,
      use_image_if_no_bounding_boxes=True)
  h, w = shape[0], shape[1]
  failed = tf.logical_and(tf.equal(crop_size[0], h), tf.equal(crop_size[1], w))

  def centre():
    side = tf.minimum(h, w)
    return tf.image.crop_to_bounding_box(image, (h - side) // 2,
                                         (w - side) // 2, side, side)

  def sampled():
    return tf.slice(image, begin, crop_size)

  crop = tf.cond(failed, centre, sampled)
  crop = tf.image.resize(crop[None], (size, size), method='bicubic')[0]
  # Static shape for the channel-dependent ops that follow.
  crop = tf.ensure_shape(crop, [size, size, image.shape[-1]])
  return tf.clip_by_value(crop, 0.0, 1.0)


def color_jitter(image, seed, brightness, contrast, saturation, hue):
  """TF-semantics jitter in random order: brightness adds a delta, contrast
  scales around the per-channel mean, saturation and hue act in HSV."""
  order_seed, b_seed, c_seed, s_seed, h_seed = split_seed(seed, 5)
  rgb = image.shape[-1] == 3
  ops = [
      lambda x: tf.image.stateless_random_brightness(x, brightness, b_seed),
      lambda x: tf.image.stateless_random_contrast(x, 1 - contrast,
                                                   1 + contrast, c_seed),
  ]
  if rgb:
    ops += [
        lambda x: tf.image.stateless_random_saturation(x, 1 - saturation,
                                                       1 + saturation, s_seed),
        lambda x: tf.image.stateless_random_hue(x, hue, h_seed),
    ]
  order = tf.argsort(tf.random.stateless_uniform([len(ops)], order_seed))
  for i in range(len(ops)):
    branches = [lambda op=op: tf.clip_by_value(op(image), 0.0, 1.0)
                for op in ops]
    # Rebind `image` each round; the lambdas read it at trace time.
    image = tf.switch_case(order[i], branches)
  return image


def to_grayscale(image):
  """Luma, replicated to the input's channel count."""
  if image.shape[-1] == 1:
    return image
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def gaussian_blur(image, seed, sigma_range=(0.1, 2.0)):
  """Separable gaussian blur, kernel 2 * (side // 20) + 1 (~10% of the side,
  23 at 224 px as in the official code), sigma ~ U(sigma_range)."""
  side = image.shape[0]
  radius = max(side // 10 // 2, 1)
  sigma = _uniform(seed, *sigma_range)
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  kernel /= tf.reduce_sum(kernel)
  channels = image.shape[-1]
  k_h = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
  k_w = tf.reshape(k_h, [1, -1, channels, 1])
  out = tf.nn.depthwise_conv2d(image[None], k_h, [1, 1, 1, 1], 'SAME')
  out = tf.nn.depthwise_conv2d(out, k_w, [1, 1, 1, 1], 'SAME')
  return out[0]


def solarize(image, threshold: float = 0.5):
  return tf.where(image < threshold, image, 1.0 - image)


def augment_view(image, seed, params: Mapping[str, Any], size: int):
  """One augmented view of a float [0, 1] HWC image (before normalisation)."""
  seeds = split_seed(seed, 8)
  image = random_resized_crop(image, seeds[0], size, params['crop_area'],
                              params['crop_aspect'])
  image = _maybe(seeds[1], params['flip_prob'], tf.image.flip_left_right,
                 image)
  image = _maybe(seeds[2], params['jitter_prob'],
                 lambda x: color_jitter(x, seeds[3], params['brightness'],
                                        params['contrast'],
                                        params['saturation'], params['hue']),
                 image)
  image = _maybe(seeds[4], params['grayscale_prob'], to_grayscale, image)
  image = _maybe(seeds[5], params['blur_prob'],
                 lambda x: gaussian_blur(x, seeds[6], params['blur_sigma']),
                 image)
  image = _maybe(seeds[7], params['solarize_prob'], solarize, image)
  return tf.clip_by_value(image, 0.0, 1.0)


def normalize(image, mean, std):
  """Per-channel (x - mean) / std of a float [0, 1] image."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def two_views(image, seed, view1: Mapping[str, Any], view2: Mapping[str, Any],
              size: int):
  """The asymmetric pair (view 1, view 2) of a uint8 or [0, 1] image."""
  if image.dtype == tf.uint8:
    image = tf.image.convert_image_dtype(image, tf.float32)
  s1, s2 = split_seed(seed, 2)
  return augment_view(image, s1, view1, size), augment_view(image, s2, view2,
                                                            size)


def eval_preprocess(images, size: int, crop_fraction: float):
  """Deterministic eval view of an image (HWC) or a batch (NHWC) of equal-size
  images: resize the shorter side to size / crop_fraction (256 for 224 at
  0.875) and centre-crop to size; images already at `size` with
  crop_fraction 1 are only converted to float."""
  if images.dtype == tf.uint8:
    images = tf.image.convert_image_dtype(images, tf.float32)
  h_axis = images.shape.rank - 3
  if (crop_fraction >= 1.0 and images.shape[h_axis] == size
      and images.shape[h_axis + 1] == size):
    return images
  shape = tf.shape(images)
  h = tf.cast(shape[h_axis], tf.float32)
  w = tf.cast(shape[h_axis + 1], tf.float32)
  scale = math.ceil(size / crop_fraction) / tf.minimum(h, w)
  new_h = tf.cast(tf.round(h * scale), tf.int32)
  new_w = tf.cast(tf.round(w * scale), tf.int32)
  images = tf.image.resize(images, (new_h, new_w), method='bicubic')
  images = tf.image.resize_with_crop_or_pad(images, size, size)
  return tf.clip_by_value(images, 0.0, 1.0)
