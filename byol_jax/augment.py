"""BYOL / SimSiam image augmentations as stateless TensorFlow ops.

Every random draw comes from an explicit `seed` (a shape-[2] int tensor), so
the same (seed, image) always gives the same output, eagerly or inside
tf.data, alone or in any batch, and a resumed run sees exactly the views an
uninterrupted one would have seen. A view is two parts: `sample_view` per
image (the crop and the draws), then `apply_view` on a batch (everything
else, in XLA). Images are float32 in [0, 1] (uint8 sources are converted
after cropping), HWC, with 1 (grayscale) or 3 channels; the
colour ops that need 3 channels (saturation, hue, grayscale) are identities
on 1-channel images, in training and evaluation alike.

The augmentation parameters of every preset live in `PRESETS` below
(BYOL paper, appendix B, Table 6).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import tensorflow as tf

# One view's parameters. Probabilities are per image; each image gets its own
# draw (a batch-shared draw is a known bug in one PyTorch peer).
# crop_impl: 'inception' (up to 10 draws, then a centre crop: TF's
# sample_distorted_bounding_box, like torchvision's RandomResizedCrop) or
# 'official' (BYOL's one draw, clamped to the image; `official_crop_window`).
_BYOL_VIEW = dict(
    crop_impl='inception',
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
    # BYOL, 224x224 ImageNet: blur always / rarely, solarize only in view 2;
    # the official code's crop.
    'byol_imagenet': (_view(_BYOL_VIEW, crop_impl='official'),
                      _view(_BYOL_VIEW, crop_impl='official', blur_prob=0.1,
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


def crop_flip_view(crop_area=(0.08, 1.0), crop_aspect=(3 / 4, 4 / 3),
                   flip_prob: float = 0.5) -> dict[str, Any]:
  """Random resized crop + horizontal flip and nothing else: the train view of
  linear evaluation and fine-tuning (BYOL appendix C)."""
  return _view(_BYOL_VIEW, crop_area=tuple(crop_area),
               crop_aspect=tuple(crop_aspect), flip_prob=flip_prob,
               jitter_prob=0.0,
               grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)


def preset(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
  if name not in PRESETS:
    raise ValueError(f'unknown augmentation preset {name!r}; choose one of '
                     f'{sorted(PRESETS)}')
  return tuple(dict(v) for v in PRESETS[name])


def split_seed(seed, num: int):
  """`num` independent stateless seeds derived from `seed`."""
  return tf.unstack(tf.random.experimental.stateless_split(seed, num))


CROP_IMPLS = ('inception', 'official')


def official_crop_window(shape, seed, area=(0.08, 1.0),
                         aspect=(3 / 4, 4 / 3)):
  """BYOL's training crop (byol/utils/dataset.py, _decode_and_random_crop):
  ONE draw of the area fraction U(area) and a log-uniform aspect ratio,
  w = round(sqrt(A a)), h = round(sqrt(A / a)), each clamped to the image,
  then a uniform offset; no retries, no fallback. Also at least 1 pixel
  (a guard for tiny images the official code never meets).

  Args:
    shape: the image's [H, W, ...] (a tensor: tf.shape, or
      tf.image.extract_jpeg_shape of the encoded bytes).
  Returns:
    [offset_h, offset_w, h, w] int32, the window of tf.io.decode_and_crop_jpeg.
  """
  s_area, s_aspect, s_h, s_w = split_seed(seed, 4)
  img_h, img_w = shape[0], shape[1]
  target = tf.random.stateless_uniform([], s_area, *area) * tf.cast(
      img_h * img_w, tf.float32)
  log_ratio = tf.random.stateless_uniform([], s_aspect, math.log(aspect[0]),
                                          math.log(aspect[1]))
  ratio = tf.exp(log_ratio)
  w = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  w = tf.clip_by_value(w, 1, img_w)
  h = tf.clip_by_value(h, 1, img_h)
  offset_h = tf.random.stateless_uniform([], s_h, 0, img_h - h + 1, tf.int32)
  offset_w = tf.random.stateless_uniform([], s_w, 0, img_w - w + 1, tf.int32)
  return tf.stack([offset_h, offset_w, h, w])


def _inception_crop(image, seed, area, aspect, max_attempts: int = 10):
  """Up to `max_attempts` draws of TF's sample_distorted_bounding_box; if
  none fits, the centre square (torchvision's fallback keeps the nearest
  allowed aspect ratio instead)."""
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

  return tf.cond(failed, centre, sampled)


def random_resized_crop(image, seed, size: int, area=(0.08, 1.0),
                        aspect=(3 / 4, 4 / 3), impl: str = 'inception'):
  """Crop of random area fraction and aspect ratio, resized bicubically to a
  float [0, 1] (size, size, C) image.

  impl: 'inception' (`_inception_crop`) or 'official' (`official_crop_window`).
  A uint8 image is converted after cropping, so only the crop's pixels are.
  The official code decodes only each crop's window of the JPEG
  (tf.io.decode_and_crop_jpeg); for two views per image one full decode and
  two slices is faster on CPU (benchmarks/jpeg_crop.py: the window decodes
  run at 0.8x the rate), so our pipeline decodes once and crops here.
  """
  if impl not in CROP_IMPLS:
    raise ValueError(f'crop_impl={impl!r}: use one of {CROP_IMPLS}.')
  if impl == 'official':
    window = official_crop_window(tf.shape(image), seed, area, aspect)
    crop = tf.slice(image, tf.concat([window[:2], [0]], 0),
                    tf.concat([window[2:], [-1]], 0))
  else:
    crop = _inception_crop(image, seed, area, aspect)
  crop = tf.image.resize(crop[None], (size, size), method='bicubic')[0]
  if image.dtype == tf.uint8:
    crop /= 255.0
  # Static shape for the channel-dependent ops that follow.
  crop = tf.ensure_shape(crop, [size, size, image.shape[-1]])
  return tf.clip_by_value(crop, 0.0, 1.0)


# The per-image part of a view is the crop (images may differ in size before
# it) and the random draws; everything after the crop runs on whole batches,
# each image with its own parameters, in one XLA-compiled function. On CPU
# this is what makes tf.data fast: TF's eager kernels make one pass over
# memory per op, XLA fuses the elementwise chain into a few loops
# (benchmarks/input_pipeline.py; ~6x on the colour ops at 224 px).

# The random draws of a view after its crop, one uniform each, in this
# order, then up to 4 for the jitter ops' order: the one table of slots
# both paths read (`sample_view` here in tf.data, `device_augment` in the
# train step).
DRAW_SLOTS = ('flip', 'jitter', 'grayscale', 'blur', 'solarize', 'brightness',
              'contrast', 'saturation', 'hue', 'sigma')
_NUM_DRAWS = len(DRAW_SLOTS) + 4


def jitter_ops(channels: int) -> int:
  """Brightness, contrast, and for RGB saturation and hue."""
  return 4 if channels == 3 else 2


def draws(u, params: Mapping[str, Any], n_ops: int, argsort) -> dict:
  """A view's random parameters from its uniforms `u` (at least
  len(DRAW_SLOTS) + n_ops of them), TF or JAX arrays alike: Bernoulli
  draws for each op, the jitter strengths, the blur sigma, and a uniformly
  random order of the n_ops jitter ops (`argsort`: tf.argsort / jnp.argsort)."""
  slot = dict(zip(DRAW_SLOTS, (u[i] for i in range(len(DRAW_SLOTS)))))
  lerp = lambda k, lo, hi: lo + (hi - lo) * slot[k]  # noqa: E731
  b, c, sat, hue = (params[k] for k in ('brightness', 'contrast',
                                        'saturation', 'hue'))
  n = len(DRAW_SLOTS)
  return {
      'flip': slot['flip'] < params['flip_prob'],
      'jitter': slot['jitter'] < params['jitter_prob'],
      'grayscale': slot['grayscale'] < params['grayscale_prob'],
      'blur': slot['blur'] < params['blur_prob'],
      'solarize': slot['solarize'] < params['solarize_prob'],
      'brightness': lerp('brightness', -b, b),
      'contrast': lerp('contrast', 1 - c, 1 + c),
      'saturation': lerp('saturation', 1 - sat, 1 + sat),
      'hue': lerp('hue', -hue, hue),
      'sigma': lerp('sigma', *params['blur_sigma']),
      'order': argsort(u[n:n + n_ops]),
  }


def sample_view(image, seed, params: Mapping[str, Any], size: int):
  """The per-image part of one view: its random resized crop (float [0, 1],
  (size, size, C)) and every other random draw, as scalars. Batch these, then
  call `apply_view`."""
  crop_seed, draw_seed = split_seed(seed, 2)
  # Saved configs from before crop_impl existed used the inception crop.
  crop = random_resized_crop(image, crop_seed, size, params['crop_area'],
                             params['crop_aspect'],
                             params.get('crop_impl', 'inception'))
  u = tf.random.stateless_uniform([_NUM_DRAWS], draw_seed)
  return {'image': crop, **draws(u, params, jitter_ops(crop.shape[-1]),
                                 tf.argsort)}


def _per_image(v):
  """Reshapes a (B,) parameter to broadcast against (B, H, W, C) images."""
  return tf.reshape(v, [-1, 1, 1, 1])


def _max_min(x):
  """Channel max and min of RGB images, as elementwise ops XLA fuses."""
  r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
  return (tf.maximum(tf.maximum(r, g), b), tf.minimum(tf.minimum(r, g), b))


def adjust_brightness(x, delta):
  """tf.image.adjust_brightness per image: x + delta."""
  return x + _per_image(delta)


def adjust_contrast(x, factor):
  """tf.image.adjust_contrast per image: scale around the per-channel mean."""
  mean = tf.reduce_mean(x, axis=(1, 2), keepdims=True)
  return (x - mean) * _per_image(factor) + mean


def adjust_saturation(x, factor):
  """tf.image.adjust_saturation per image without the HSV round trip: with
  V = max and S = (V - min) / V, scaling S by f (clipped to 1) keeps V and
  the hue, and moves each channel to V - (V - x) * min(f, 1 / S)."""
  v, lo = _max_min(x)
  scale = tf.minimum(_per_image(factor), tf.math.divide_no_nan(v, v - lo))
  return v - (v - x) * scale


def adjust_hue(x, delta):
  """tf.image.adjust_hue per image: rotate H by delta (in turns) in HSV."""
  hsv = tf.image.rgb_to_hsv(x)
  h = tf.math.floormod(hsv[..., :1] + _per_image(delta), 1.0)
  return tf.image.hsv_to_rgb(tf.concat([h, hsv[..., 1:]], -1))


_JITTER_OPS = (('brightness', adjust_brightness),
               ('contrast', adjust_contrast),
               ('saturation', adjust_saturation), ('hue', adjust_hue))


def color_jitter_batch(images, draws):
  """TF-semantics colour jitter of the images whose draws['jitter'] is set:
  the ops in each image's own random order, values clipped after each op (as
  the official BYOL code does). Each round computes every op and keeps, per
  image, the one its order names: static shapes, so XLA fuses the round."""
  ops = _JITTER_OPS[:jitter_ops(images.shape[-1])]
  jitter = _per_image(draws['jitter'])
  for position in range(len(ops)):
    op_now = _per_image(draws['order'][:, position])
    out = images
    for i, (name, fn) in enumerate(ops):
      out = tf.where(jitter & tf.equal(op_now, i),
                     tf.clip_by_value(fn(images, draws[name]), 0.0, 1.0), out)
    images = out
  return images


def to_grayscale(image):
  """Luma, replicated to the input's channel count (any leading axes)."""
  if image.shape[-1] == 1:
    return image
  return tf.tile(tf.image.rgb_to_grayscale(image),
                 [1] * (image.shape.rank - 1) + [3])


def blur_radius(side: int) -> int:
  """The official rule (byol/utils/augmentations.py: kernel_size = side /
  10, radius = int(kernel_size / 2)): kernel 2 r + 1 = 23 at 224 px, 3 at
  28-32 px, and r = 0, no blur at all, under 20 px."""
  return int(side / 10 / 2)


_BLUR_BLOCK = 32


def _blur_rows(x, kernels, radius: int):
  """1-D 'SAME' (zero-padded) convolution of (B, N, M) along N, each image
  with its own symmetric kernel (B, 2r + 1).

  Blocked banded matmul: output rows are cut into blocks of T, each the
  product of one (T, T + 2r) Toeplitz band with its T + 2r input rows, so
  the matmul does ~(T + 2r) / N of the work of a full (N, N) band matrix,
  and on CPU (with or without XLA) beats TF's depthwise_conv2d with a 23-tap
  kernel many times over.
  """
  b, n, m = tf.shape(x)[0], x.shape[1], x.shape[2]
  block = min(n, _BLUR_BLOCK)
  num_blocks = -(-n // block)
  padded = tf.pad(x, [[0, 0], [radius, radius + num_blocks * block - n],
                      [0, 0]])
  windows = tf.stack([padded[:, i * block:(i + 1) * block + 2 * radius]
                      for i in range(num_blocks)], axis=1)
  # band[i, j] = kernel[j - i] for 0 <= j - i <= 2r: row i of a block reads
  # padded rows i .. i + 2r, i.e. input rows i - r .. i + r.
  offset = tf.range(block + 2 * radius)[None, :] - tf.range(block)[:, None]
  inside = (offset >= 0) & (offset <= 2 * radius)
  band = tf.where(inside[None], tf.gather(
      kernels, tf.clip_by_value(offset, 0, 2 * radius), axis=1), 0.0)
  # One plain batched matmul over (image, block) pairs.
  band = tf.repeat(band, num_blocks, axis=0)
  windows = tf.reshape(windows, [-1, block + 2 * radius, m])
  out = tf.matmul(band, windows)
  return tf.reshape(out, [b, num_blocks * block, m])[:, :n]


def gaussian_blur_batch(images, sigma):
  """Separable gaussian blur of (B, H, W, C) images, one sigma (B,) each,
  kernel 2 * blur_radius(H) + 1, zero padding ('SAME'): `_blur_rows` along
  H, then along W; the same as a direct convolution to float rounding."""
  _, h, w, c = images.shape
  radius = blur_radius(h)
  if radius == 0:  # A 1-tap kernel: the image itself.
    return images
  t = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  kernels = tf.exp(-tf.square(t)[None] / (2.0 * tf.square(sigma)[:, None]))
  kernels /= tf.reduce_sum(kernels, axis=1, keepdims=True)
  b = tf.shape(images)[0]
  out = _blur_rows(tf.reshape(images, [b, h, w * c]), kernels, radius)
  out = tf.transpose(tf.reshape(out, [b, h, w, c]), [0, 2, 1, 3])
  out = _blur_rows(tf.reshape(out, [b, w, h * c]), kernels, radius)
  return tf.transpose(tf.reshape(out, [b, w, h, c]), [0, 2, 1, 3])


def solarize(image, threshold: float = 0.5):
  return tf.where(image < threshold, image, 1.0 - image)


@tf.function(jit_compile=True)
def _colour_ops(draws):
  x = draws['image']
  x = tf.where(_per_image(draws['flip']), tf.reverse(x, axis=[2]), x)
  x = color_jitter_batch(x, draws)
  return tf.where(_per_image(draws['grayscale']), to_grayscale(x), x)


@tf.function(jit_compile=True)
def _finish(x, draws, blur_all: bool, mean, std):
  if blur_all:
    x = gaussian_blur_batch(x, draws['sigma'])
  x = tf.where(_per_image(draws['solarize']), solarize(x), x)
  return (tf.clip_by_value(x, 0.0, 1.0) - mean) / std


def apply_view(draws, params: Mapping[str, Any], mean=None, std=None):
  """The batched part of a view: flip, colour jitter, grayscale, blur,
  solarize (in this order, as the official code), each where its draw fired,
  then (x - mean) / std if given.

  Args:
    draws: `sample_view` outputs batched along a leading axis; 'image' is
      (B, S, S, C) float in [0, 1].
    params: the view's parameters (only 'blur_prob' is read here).
  Returns:
    (B, S, S, C) float32: in [0, 1], or normalised.
  """
  channels = draws['image'].shape[-1]
  mean = tf.zeros([channels]) if mean is None else tf.constant(mean,
                                                                tf.float32)
  std = tf.ones([channels]) if std is None else tf.constant(std, tf.float32)
  x = _colour_ops(draws)
  blur_prob = params['blur_prob']
  if 0 < blur_prob < 1:
    # A rare blur (p=0.1 in BYOL's view 2): blur only the images that drew
    # it, outside XLA (their number varies from batch to batch).
    index = tf.where(draws['blur'])
    blurred = gaussian_blur_batch(tf.gather_nd(x, index),
                                  tf.gather_nd(draws['sigma'], index))
    x = tf.tensor_scatter_nd_update(x, index, blurred)
  return _finish(x, draws, blur_prob >= 1, mean, std)


def _single(draws):
  return {k: v[None] for k, v in draws.items()}


def color_jitter(image, seed, brightness, contrast, saturation, hue):
  """Colour jitter of one image (always applied), drawn from `seed`."""
  params = dict(crop_area=(1.0, 1.0), crop_aspect=(1.0, 1.0), flip_prob=0.0,
                jitter_prob=1.0, brightness=brightness, contrast=contrast,
                saturation=saturation, hue=hue, grayscale_prob=0.0,
                blur_prob=0.0, blur_sigma=(0.1, 2.0), solarize_prob=0.0)
  draws = _single(sample_view(image, seed, params, image.shape[0]))
  return color_jitter_batch(image[None], draws)[0]


def gaussian_blur(image, seed, sigma_range=(0.1, 2.0)):
  """Gaussian blur of one image with sigma ~ U(sigma_range) from `seed`."""
  sigma = tf.random.stateless_uniform([1], seed, *sigma_range)
  return gaussian_blur_batch(image[None], sigma)[0]


def augment_view(image, seed, params: Mapping[str, Any], size: int):
  """One augmented view of a float [0, 1] HWC image (before normalisation);
  the same as a batch of one through `sample_view` and `apply_view`."""
  return apply_view(_single(sample_view(image, seed, params, size)),
                    params)[0]


def to_float(image):
  if image.dtype == tf.uint8:
    return tf.image.convert_image_dtype(image, tf.float32)
  return image


def sample_two_views(image, seed, view1: Mapping[str, Any],
                     view2: Mapping[str, Any], size: int):
  """Per-image part of the asymmetric pair: (draws of view 1, of view 2)."""
  s1, s2 = split_seed(seed, 2)
  return (sample_view(image, s1, view1, size),
          sample_view(image, s2, view2, size))


def two_views(image, seed, view1: Mapping[str, Any], view2: Mapping[str, Any],
              size: int):
  """The asymmetric pair (view 1, view 2) of one uint8 or [0, 1] image."""
  d1, d2 = sample_two_views(image, seed, view1, view2, size)
  return (apply_view(_single(d1), view1)[0],
          apply_view(_single(d2), view2)[0])


def normalize(image, mean, std):
  """Per-channel (x - mean) / std of a float [0, 1] image."""
  return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def eval_preprocess(images, size: int, crop_fraction: float):
  """Deterministic eval view of an image (HWC) or a batch (NHWC) of equal-size
  images: resize the shorter side to size / crop_fraction (256 for 224 at
  0.875) and centre-crop to size; images already at `size` with
  crop_fraction 1 are only converted to float."""
  images = to_float(images)
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
