"""On-device (JAX) augmentation: the same pixels as the tf.data path for the
same draws, the same distribution of draws, and device-layout invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from byol_jax import augment, device_augment

RNG = np.random.RandomState(0)
BYOL_2 = augment.PRESETS['byol_imagenet'][1]  # Every op has p > 0.


def _tf_draws(draws, images):
  return {'image': tf.constant(images),
          **{k: tf.constant(np.asarray(v)) for k, v in draws.items()}}


@pytest.mark.parametrize('channels,side', [(3, 24), (1, 24), (3, 16)])
def test_same_pixels_as_the_tf_path_for_the_same_draws(channels, side):
  """Every op at once (p = 1 each, random jitter order per image): the JAX
  view equals augment.apply_view's, normalisation included. At 16 px the
  official blur radius is 0: no image is blurred, in either path."""
  params = dict(BYOL_2, flip_prob=0.5, jitter_prob=1.0, grayscale_prob=0.5,
                blur_prob=0.5, solarize_prob=0.5)
  images = RNG.uniform(0.0, 1.0, (16, side, side, channels)).astype(
      np.float32)
  draws = device_augment.sample_batch_draws(
      jax.random.key(1), jnp.arange(16), params, channels)
  mean, std = (0.4,) * channels, (0.25,) * channels
  ours = device_augment.apply_view(jnp.asarray(images), draws, mean, std)
  theirs = augment.apply_view(_tf_draws(draws, images), params, mean, std)
  # Several permutations of the jitter order and every op occur.
  assert len({tuple(o) for o in np.asarray(draws['order'])}) > (
      3 if channels == 3 else 1)
  assert 0 < np.asarray(draws['blur']).sum() < 16
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=2e-5)
  unblurred = device_augment.apply_view(jnp.asarray(images), draws, mean, std,
                                        blur=False)
  blurred = np.any(np.abs(np.asarray(ours) - np.asarray(unblurred)) > 1e-6,
                   axis=(1, 2, 3))
  np.testing.assert_array_equal(
      blurred, np.asarray(draws['blur']) if side >= 20 else False)


def test_hsv_round_trip_and_hue_match_tf():
  x = RNG.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32)
  x[0, 0, 0] = [0.5, 0.5, 0.5]  # Grey: zero saturation.
  x[0, 0, 1] = [0.0, 0.0, 0.0]  # Black: zero value.
  np.testing.assert_allclose(device_augment.rgb_to_hsv(jnp.asarray(x)),
                             tf.image.rgb_to_hsv(x).numpy(), atol=1e-6)
  np.testing.assert_allclose(
      device_augment.hsv_to_rgb(device_augment.rgb_to_hsv(jnp.asarray(x))), x,
      atol=1e-6)
  delta = np.array([0.1, -0.1, 0.45, 0.0], np.float32)
  np.testing.assert_allclose(
      device_augment.adjust_hue(jnp.asarray(x), jnp.asarray(delta)),
      np.stack([tf.image.adjust_hue(x[i], delta[i]).numpy()
                for i in range(4)]), atol=1e-5)


def test_draws_have_the_tf_paths_distribution():
  """20,000 draws each: event rates at their probabilities (4 sigma), the
  continuous draws uniform on their ranges like the TF path's (two-sample
  Kolmogorov-Smirnov distance under 0.03), all 24 jitter orders."""
  n = 20_000
  ours = jax.device_get(device_augment.sample_batch_draws(
      jax.random.key(0), jnp.arange(n), BYOL_2, 3))
  image = tf.zeros([4, 4, 3])
  sample = tf.function(lambda s: augment.sample_view(image, s, BYOL_2, 4))
  theirs = [sample(tf.constant([i, 5], tf.int64)) for i in range(2000)]
  for event, field in (('flip', 'flip_prob'), ('jitter', 'jitter_prob'),
                       ('grayscale', 'grayscale_prob'), ('blur', 'blur_prob'),
                       ('solarize', 'solarize_prob')):
    p = BYOL_2[field]
    rate = ours[event].mean()
    assert abs(rate - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-9, (event, rate)
  for name, (lo, hi) in {'brightness': (-0.4, 0.4), 'contrast': (0.6, 1.4),
                         'saturation': (0.8, 1.2), 'hue': (-0.1, 0.1),
                         'sigma': (0.1, 2.0)}.items():
    a = np.sort(ours[name])
    assert lo <= a[0] and a[-1] <= hi
    b = np.sort([float(t[name]) for t in theirs])
    grid = np.linspace(lo, hi, 200)
    ks = np.max(np.abs(np.searchsorted(a, grid) / len(a)
                       - np.searchsorted(b, grid) / len(b)))
    assert ks < 0.03 + 1.36 * np.sqrt(1 / len(b)), (name, ks)
  orders, counts = np.unique(ours['order'], axis=0, return_counts=True)
  assert len(orders) == 24 and counts.min() > n / 24 * 0.85


def test_views_do_not_depend_on_the_split_of_the_batch():
  """An image's draws depend on its global index only: two halves drawn
  separately equal the whole batch drawn at once."""
  images = jnp.asarray(RNG.uniform(0, 1, (8, 12, 12, 3)), jnp.float32)
  key = jax.random.key(3)
  whole = device_augment.augment_batch(key, images, jnp.arange(8), BYOL_2)
  halves = [device_augment.augment_batch(key, images[i:i + 4],
                                         jnp.arange(i, i + 4), BYOL_2)
            for i in (0, 4)]
  np.testing.assert_allclose(np.concatenate(halves), whole, atol=1e-6)
  other = device_augment.augment_batch(jax.random.key(4), images,
                                       jnp.arange(8), BYOL_2)
  assert not np.allclose(other, whole)
