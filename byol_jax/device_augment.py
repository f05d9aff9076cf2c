"""On-device augmentation: the colour half of a view, in JAX, inside the step.

The official BYOL code splits a view this way: random resized crop on the
host (tf.data), then flip, colour jitter, grayscale, blur and solarisation on
the accelerator, each image with its own random draws. With
`augment.on_device=True` the input pipeline ships the crops (float [0, 1],
not normalised) and the train step calls `augment_batch`, for hosts whose
CPUs cannot feed the accelerators.

The parameters stay in one place (`augment.PRESETS`); the ops here are
`augment.apply_view`'s, op for op (TF semantics: brightness adds, contrast
scales around the mean, saturation and hue in HSV, clip after each jitter
op, random jitter order); tests check that both give the same pixels for the
same draws, and that the draws have the same distribution.

Each image's draws come from a key folded from (key, its index in the
global batch): the views do not depend on the device count or the process
layout, and a resumed run redraws exactly the same ones.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp

from byol_jax import augment

# TF's tf.image.rgb_to_grayscale weights.
_LUMA = (0.2989, 0.587, 0.114)


def sample_draws(key: jax.Array, params: Mapping[str, Any],
                 channels: int) -> dict[str, jax.Array]:
  """One image's random draws for the ops after the crop (scalars, and the
  (n_ops,) jitter order), from the same uniform laws as
  `augment.sample_view`."""
  n_ops = augment.jitter_ops(channels)
  u = jax.random.uniform(key, (len(augment.DRAW_SLOTS) + n_ops,))
  return augment.draws(u, params, n_ops, jnp.argsort)


def sample_batch_draws(key: jax.Array, indices: jax.Array,
                       params: Mapping[str, Any], channels: int):
  """Draws for the images at global batch positions `indices` (B,)."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
  return jax.vmap(lambda k: sample_draws(k, params, channels))(keys)


def _per_image(v):
  return v.reshape(-1, 1, 1, 1)


def adjust_brightness(x, delta):
  return x + _per_image(delta)


def adjust_contrast(x, factor):
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  return (x - mean) * _per_image(factor) + mean


def adjust_saturation(x, factor):
  """HSV saturation x factor (clipped at 1), as `augment.adjust_saturation`:
  V and H are kept, each channel moves to V - (V - x) * min(f, 1 / S)."""
  v = jnp.max(x, axis=-1, keepdims=True)
  lo = jnp.min(x, axis=-1, keepdims=True)
  spread = v - lo
  inv_s = jnp.where(spread > 0, v / jnp.where(spread > 0, spread, 1.0), 0.0)
  return v - (v - x) * jnp.minimum(_per_image(factor), inv_s)


def rgb_to_hsv(x):
  """tf.image.rgb_to_hsv: H in turns [0, 1), S, V."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  v = jnp.maximum(jnp.maximum(r, g), b)
  spread = v - jnp.minimum(jnp.minimum(r, g), b)
  s = jnp.where(v > 0, spread / jnp.where(v > 0, v, 1.0), 0.0)
  safe = jnp.where(spread > 0, spread, 1.0)
  h = jnp.where(v == r, (g - b) / safe,
                jnp.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  h = jnp.where(spread > 0, jnp.mod(h / 6.0, 1.0), 0.0)
  return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv):
  """tf.image.hsv_to_rgb."""
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  dh = jnp.mod(h, 1.0) * 6.0
  r = jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0)
  g = jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0)
  b = jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)
  rgb = jnp.stack([r, g, b], axis=-1)
  return v[..., None] * (1.0 + s[..., None] * (rgb - 1.0))


def adjust_hue(x, delta):
  hsv = rgb_to_hsv(x)
  h = jnp.mod(hsv[..., 0] + delta.reshape(-1, 1, 1), 1.0)
  return hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1))


_JITTER_OPS = (('brightness', adjust_brightness),
               ('contrast', adjust_contrast),
               ('saturation', adjust_saturation), ('hue', adjust_hue))


def color_jitter(x, draws):
  """The jitter ops in each image's own order, clipped after each op, where
  draws['jitter'] is set (as `augment.color_jitter_batch`)."""
  ops = _JITTER_OPS[:draws['order'].shape[-1]]
  jitter = _per_image(draws['jitter'])
  for position in range(len(ops)):
    op_now = _per_image(draws['order'][:, position])
    out = x
    for i, (name, fn) in enumerate(ops):
      out = jnp.where(jitter & (op_now == i),
                      jnp.clip(fn(x, draws[name]), 0.0, 1.0), out)
    x = out
  return x


def to_grayscale(x):
  if x.shape[-1] == 1:
    return x
  luma = jnp.tensordot(x, jnp.asarray(_LUMA, x.dtype), axes=[[-1], [0]])
  return jnp.repeat(luma[..., None], 3, axis=-1)


def _band(kernels, n: int, radius: int):
  """(B, n, n) matrices M with M[i, j] = kernel[j - i + r]: a 'SAME'
  zero-padded 1-D convolution as a matmul."""
  offset = jnp.arange(n)[None, :] - jnp.arange(n)[:, None] + radius
  inside = (offset >= 0) & (offset <= 2 * radius)
  taps = kernels[:, jnp.clip(offset, 0, 2 * radius)]
  return jnp.where(inside[None], taps, 0.0)


def gaussian_blur(x, sigma):
  """Separable gaussian blur of (B, H, W, C), one sigma (B,) per image,
  kernel 2 * augment.blur_radius(H) + 1, zero padding."""
  _, h, w, _ = x.shape
  radius = augment.blur_radius(h)
  if radius == 0:  # A 1-tap kernel: the image itself.
    return x
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  kernels = jnp.exp(-t[None] ** 2 / (2.0 * sigma[:, None] ** 2))
  kernels /= jnp.sum(kernels, axis=1, keepdims=True)
  x = jnp.einsum('bij,bjwc->biwc', _band(kernels, h, radius), x)
  return jnp.einsum('bkw,biwc->bikc', _band(kernels, w, radius), x)


def solarize(x, threshold: float = 0.5):
  return jnp.where(x < threshold, x, 1.0 - x)


def apply_view(images, draws, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, blur: bool = True):
  """flip, colour jitter, grayscale, blur, solarize (the official order),
  each where its draw fired, clip, then (x - mean) / std if given.

  Args:
    images: (B, S, S, C) float crops in [0, 1].
    draws: `sample_batch_draws` output, (B,)-leading.
    blur: False skips computing the blur (a view with blur_prob 0).
  """
  x = jnp.where(_per_image(draws['flip']), images[:, :, ::-1], images)
  x = color_jitter(x, draws)
  x = jnp.where(_per_image(draws['grayscale']), to_grayscale(x), x)
  if blur:
    x = jnp.where(_per_image(draws['blur']),
                  gaussian_blur(x, draws['sigma']), x)
  x = jnp.where(_per_image(draws['solarize']), solarize(x), x)
  x = jnp.clip(x, 0.0, 1.0)
  if mean is not None:
    x = (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)
  return x


def augment_batch(key: jax.Array, images: jax.Array, indices: jax.Array,
                  params: Mapping[str, Any], mean=None, std=None):
  """One view of this shard's crops; `indices` are their positions in the
  global batch (so the draws do not depend on how the batch is split)."""
  draws = sample_batch_draws(key, indices, params, images.shape[-1])
  return apply_view(images, draws, mean, std, blur=params['blur_prob'] > 0)
