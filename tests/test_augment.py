"""Augmentation ops: eager == tf.data, probabilities, view asymmetry."""

import numpy as np
import pytest
import tensorflow as tf

from byol_jax import augment

RNG = np.random.RandomState(0)
# 24 px: the official blur has radius 1 there (none under 20 px).
COLOR = tf.constant(RNG.uniform(0.1, 0.9, (24, 24, 3)), tf.float32)
GRAY = tf.constant(RNG.uniform(0.1, 0.9, (24, 24, 1)), tf.float32)
SEED = tf.constant([3, 7], tf.int64)

# Only the op under test is active; the crop keeps the whole image.
OFF = dict(augment.PRESETS['byol_imagenet'][0], crop_area=(1.0, 1.0),
           crop_aspect=(1.0, 1.0), flip_prob=0.0, jitter_prob=0.0,
           grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0,
           blur_sigma=(1.0, 2.0))  # A blur that always shows.

OPS = {
    'crop': lambda x, s: augment.random_resized_crop(x, s, 12),
    'jitter': lambda x, s: augment.color_jitter(x, s, 0.4, 0.4, 0.2, 0.1),
    'blur': lambda x, s: augment.gaussian_blur(x, s),
    'view': lambda x, s: augment.augment_view(
        x, s, augment.PRESETS['byol_imagenet'][1], 12),
    'two_views': lambda x, s: tf.stack(augment.two_views(
        x, s, *augment.PRESETS['byol_imagenet'], 12)),
}


@pytest.mark.parametrize('name', sorted(OPS))
@pytest.mark.parametrize('image', [COLOR, GRAY], ids=['rgb', 'gray'])
def test_eager_and_tf_data_agree(name, image):
  op = OPS[name]
  eager = op(image, SEED).numpy()
  in_data = next(iter(tf.data.Dataset.from_tensors(SEED).map(
      lambda s: op(image, s)))).numpy()
  np.testing.assert_allclose(eager, in_data, atol=1e-6)
  np.testing.assert_array_equal(op(image, SEED).numpy(), eager)  # repeats
  assert not np.allclose(op(image, SEED + 1).numpy(), eager)    # seed matters


def _fire_rate(params, fired, image=COLOR, n=400):
  """Fraction of n seeds for which `fired(input, output)` holds."""
  fn = tf.function(lambda s: augment.augment_view(image, s, params,
                                                  image.shape[0]))
  hits = sum(bool(fired(image.numpy(), fn(tf.constant([i, 11], tf.int64))
                        .numpy())) for i in range(n))
  return hits / n


def _assert_rate(rate, p, n=400):
  tol = 4 * np.sqrt(max(p * (1 - p), 1e-4) / n) + 1e-9
  assert abs(rate - p) <= tol, (rate, p)


CHANGED = lambda x, y: not np.allclose(x, y, atol=1e-4)  # noqa: E731


@pytest.mark.parametrize('field,p,fired', [
    ('flip_prob', 0.5, lambda x, y: np.allclose(y, x[:, ::-1], atol=1e-5)),
    ('jitter_prob', 0.8, CHANGED),
    ('grayscale_prob', 0.2,
     lambda x, y: np.allclose(y[..., 0], y[..., 1], atol=1e-6)),
    ('solarize_prob', 0.2, lambda x, y: np.any(y < 0.1)),
    ('blur_prob', 0.1, CHANGED),
])
def test_each_op_fires_with_its_probability(field, p, fired):
  image = COLOR
  if field == 'solarize_prob':  # values in (0.9, 1]: solarized -> below 0.1
    image = tf.constant(RNG.uniform(0.91, 1.0, (16, 16, 3)), tf.float32)
  _assert_rate(_fire_rate(dict(OFF, **{field: p}), fired, image), p)


@pytest.mark.parametrize('preset', ['byol_imagenet'])
def test_byol_views_are_asymmetric(preset):
  view1, view2 = augment.PRESETS[preset]
  keep = ('blur_prob', 'solarize_prob')
  v1 = dict(OFF, **{k: view1[k] for k in keep})
  v2 = dict(OFF, **{k: view2[k] for k in keep})
  bright = tf.constant(RNG.uniform(0.91, 1.0, (24, 24, 3)), tf.float32)
  solarized = lambda x, y: np.any(y < 0.1)  # noqa: E731
  assert _fire_rate(v1, CHANGED, COLOR, 100) == 1.0       # view 1 always blurs
  _assert_rate(_fire_rate(v2, CHANGED, COLOR), 0.1 + 0.9 * 0.2)  # blur|sol.
  assert _fire_rate(v1, solarized, bright, 100) == 0.0    # never solarizes
  _assert_rate(_fire_rate(v2, solarized, bright), 0.2)


def test_preset_parameters_match_the_paper():
  v1, v2 = augment.PRESETS['byol_imagenet']
  assert v1['crop_area'] == (0.08, 1.0) and v1['crop_aspect'] == (3 / 4, 4 / 3)
  assert (v1['brightness'], v1['contrast'], v1['saturation'], v1['hue']) == (
      0.4, 0.4, 0.2, 0.1)
  assert (v1['jitter_prob'], v1['grayscale_prob'], v1['flip_prob']) == (
      0.8, 0.2, 0.5)
  assert (v1['blur_prob'], v2['blur_prob']) == (1.0, 0.1)
  assert (v1['solarize_prob'], v2['solarize_prob']) == (0.0, 0.2)
  s1, s2 = augment.PRESETS['simsiam_imagenet']
  assert s1 == s2 and s1['crop_area'] == (0.2, 1.0) and s1['blur_prob'] == 0.5
  assert s1['saturation'] == 0.4
  small1, small2 = augment.PRESETS['byol_small']
  assert small1['blur_prob'] == small2['blur_prob'] == 0.0
  assert small2['solarize_prob'] == 0.2


def test_blur_kernel_is_ten_percent_of_the_side():
  """A single bright pixel spreads over 2 r + 1 pixels, r = int(side / 10 /
  2) as the official code computes it: none under 20 px."""
  for side in range(8, 240):
    assert augment.blur_radius(side) == int(np.float64(side) / 10.0 / 2.0)
  for side, width in ((224, 23), (32, 3), (28, 3), (20, 3), (19, 1),
                      (16, 1)):
    img = np.zeros((side, side, 1), np.float32)
    img[side // 2, side // 2] = 1.0
    out = augment.gaussian_blur(tf.constant(img), SEED, (5.0, 5.0)).numpy()
    assert (out[side // 2, :, 0] > 0).sum() == width
    assert out.sum() == pytest.approx(1.0, rel=1e-4)


def test_crop_falls_back_to_the_centre_square():
  """Area 1 with a 2:1 image cannot meet aspect 3/4..4/3: centre crop."""
  img = tf.constant(RNG.uniform(0, 1, (10, 20, 1)), tf.float32)
  out = augment.random_resized_crop(img, SEED, 10, area=(1.0, 1.0))
  np.testing.assert_allclose(out.numpy(), img.numpy()[:, 5:15], atol=1e-5)


def test_crop_output_shape_and_range():
  out = augment.random_resized_crop(COLOR, SEED, 7)
  assert out.shape == (7, 7, 3)
  assert 0.0 <= out.numpy().min() and out.numpy().max() <= 1.0
  # uint8 input: cropped, then scaled to [0, 1]; same as converting first.
  u8 = tf.constant(RNG.randint(0, 256, (16, 16, 3)), tf.uint8)
  np.testing.assert_allclose(
      augment.random_resized_crop(u8, SEED, 7).numpy(),
      augment.random_resized_crop(tf.cast(u8, tf.float32) / 255, SEED,
                                  7).numpy(), atol=1e-5)


def _np_official_windows(n, img_h, img_w, rng, area=(0.08, 1.0),
                         aspect=(3 / 4, 4 / 3)):
  """byol/utils/dataset.py's _decode_and_random_crop transcribed with numpy:
  target area U(area) x H W, log-uniform aspect, w/h rounded and clamped,
  uniform offsets. (h, w) of `n` draws."""
  target = rng.uniform(*area, n) * img_h * img_w
  ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), n))
  w = np.minimum(np.round(np.sqrt(target * ratio)), img_w)
  h = np.minimum(np.round(np.sqrt(target / ratio)), img_h)
  return h, w


def _ks(a, b):
  """Two-sample Kolmogorov-Smirnov distance."""
  grid = np.sort(np.concatenate([a, b]))
  cdf = lambda x: np.searchsorted(np.sort(x), grid, side='right') / len(x)  # noqa: E731
  return float(np.max(np.abs(cdf(a) - cdf(b))))


@pytest.mark.parametrize('img_h,img_w', [(375, 500), (100, 300)])
def test_official_crop_has_the_official_distribution(img_h, img_w):
  """4,000 seeded draws of `official_crop_window` against the official
  formula transcribed in numpy: the same distribution of areas, aspects
  and clamping (a 3:1 image clamps often: no retry, no centre fallback);
  windows inside the image; offsets uniform."""
  n = 4000
  windows = next(iter(tf.data.Dataset.range(n).map(
      lambda i: augment.official_crop_window(
          tf.constant([img_h, img_w, 3]),
          tf.stack([i, tf.constant(11, tf.int64)]))).batch(n))).numpy()
  oh, ow, h, w = windows.T
  assert (oh >= 0).all() and (ow >= 0).all()
  assert (oh + h <= img_h).all() and (ow + w <= img_w).all()
  ref_h, ref_w = _np_official_windows(n, img_h, img_w,
                                      np.random.RandomState(0))
  assert _ks(h * w / (img_h * img_w), ref_h * ref_w / (img_h * img_w)) < 0.035
  assert _ks(np.log(w / h), np.log(ref_w / ref_h)) < 0.035
  assert abs(np.mean(h == img_h) - np.mean(ref_h == img_h)) < 0.02
  # Offsets: uniform over the free range, so mean relative position 1/2.
  free = img_w - w
  rel = ow[free > 0] / free[free > 0]
  assert abs(rel.mean() - 0.5) < 0.02 and rel.min() == 0 and rel.max() == 1


def test_official_crop_is_a_function_of_its_seed():
  img = tf.constant(RNG.uniform(0, 1, (60, 80, 3)), tf.float32)
  a = augment.random_resized_crop(img, SEED, 16, impl='official')
  b = augment.random_resized_crop(img, SEED, 16, impl='official')
  c = augment.random_resized_crop(img, SEED + 1, 16, impl='official')
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.allclose(a.numpy(), c.numpy())
  # The crop is the window's pixels, resized (area 1, aspect 1 on a square
  # image: the whole image).
  square = img[:60, :60]
  whole = augment.random_resized_crop(square, SEED, 60, area=(1.0, 1.0),
                                      aspect=(1.0, 1.0), impl='official')
  np.testing.assert_allclose(whole.numpy(), square.numpy(), atol=1e-5)


def test_solarize_and_grayscale_values():
  x = tf.constant([[[0.2], [0.5], [0.9]]])
  np.testing.assert_allclose(augment.solarize(x).numpy().ravel(),
                             [0.2, 0.5, 0.1], atol=1e-6)
  g = augment.to_grayscale(tf.constant([[[1.0, 0.0, 0.0]]])).numpy()
  np.testing.assert_allclose(g.ravel(), [0.2989] * 3, atol=1e-3)
  assert augment.to_grayscale(GRAY) is GRAY


def test_two_views_differ_and_normalize():
  img = tf.constant(RNG.randint(0, 256, (16, 16, 3)), tf.uint8)
  v1, v2 = augment.two_views(img, SEED, *augment.PRESETS['byol_imagenet'], 16)
  assert v1.dtype == tf.float32 and v1.shape == (16, 16, 3)
  assert not np.allclose(v1.numpy(), v2.numpy())
  n = augment.normalize(v1, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).numpy()
  np.testing.assert_allclose(n, (v1.numpy() - 0.5) / 0.25, atol=1e-6)


def test_eval_preprocess_resizes_shorter_side_and_centre_crops():
  img = tf.constant(RNG.randint(0, 256, (300, 400, 3)), tf.uint8)
  out = augment.eval_preprocess(img, 224, 0.875)
  assert out.shape == (224, 224, 3)
  batch = augment.eval_preprocess(tf.stack([img, img]), 224, 0.875)
  np.testing.assert_allclose(batch[0].numpy(), out.numpy(), atol=1e-6)
  small = tf.constant(RNG.randint(0, 256, (28, 28, 1)), tf.uint8)
  np.testing.assert_allclose(augment.eval_preprocess(small, 28, 1.0).numpy(),
                             small.numpy() / 255.0, atol=1e-6)


def test_unknown_preset_is_refused():
  with pytest.raises(ValueError, match='byol_imagenet'):
    augment.preset('byol_huge')


def test_gaussian_blur_matches_a_direct_convolution():
  """Non-square 40x30 image, sigma fixed at 1.5: kernel 2 * (40 // 20) + 1 =
  5 taps, zero ('SAME') padding, rows then columns, as np.convolve does."""
  image = RNG.uniform(0, 1, (40, 30, 3)).astype(np.float32)
  out = augment.gaussian_blur(tf.constant(image), SEED, (1.5, 1.5)).numpy()
  taps = np.exp(-np.arange(-2, 3) ** 2 / (2 * 1.5 ** 2))
  taps /= taps.sum()
  expected = np.apply_along_axis(np.convolve, 0, image, taps, 'same')
  expected = np.apply_along_axis(np.convolve, 1, expected, taps, 'same')
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # Interior of a constant image is unchanged (the kernel sums to 1).
  flat = augment.gaussian_blur(tf.fill([40, 30, 1], 0.5), SEED).numpy()
  np.testing.assert_allclose(flat[2:-2, 2:-2], 0.5, atol=1e-6)


def test_batched_colour_ops_match_tf_image_per_image():
  """Each image of the batch gets its own parameter, with TF's semantics."""
  images = tf.constant(RNG.uniform(0, 1, (3, 8, 8, 3)), tf.float32)
  cases = [
      (augment.adjust_brightness, tf.image.adjust_brightness,
       [-0.3, 0.0, 0.25]),
      (augment.adjust_contrast, tf.image.adjust_contrast, [0.6, 1.0, 1.4]),
      (augment.adjust_saturation, tf.image.adjust_saturation,
       [0.8, 1.0, 1.2]),
      (augment.adjust_saturation, tf.image.adjust_saturation,
       [0.0, 3.0, 10.0]),  # S clipped at 1, and fully desaturated.
      (augment.adjust_hue, tf.image.adjust_hue, [-0.1, 0.05, 0.1]),
  ]
  for ours, theirs, params in cases:
    out = ours(images, tf.constant(params)).numpy()
    for i, p in enumerate(params):
      np.testing.assert_allclose(out[i], theirs(images[i], p).numpy(),
                                 atol=2e-5, err_msg=f'{ours.__name__} {p}')


@pytest.mark.parametrize('blur_prob', [0.5, 1.0])  # Subset / XLA blur paths.
def test_batched_view_equals_each_image_alone(blur_prob):
  """apply_view on a batch == augment_view of each image with its seed:
  the batch shares nothing but the code path."""
  params = dict(augment.PRESETS['byol_imagenet'][1], blur_prob=blur_prob)
  images = tf.constant(RNG.uniform(0, 1, (6, 20, 20, 3)), tf.float32)
  seeds = [tf.constant([i, 5], tf.int64) for i in range(6)]
  draws = [augment.sample_view(images[i], seeds[i], params, 16)
           for i in range(6)]
  batched = augment.apply_view(
      {k: tf.stack([d[k] for d in draws]) for k in draws[0]}, params).numpy()
  for i in range(6):
    np.testing.assert_allclose(
        batched[i], augment.augment_view(images[i], seeds[i], params,
                                         16).numpy(), atol=1e-5)
  # Six images, six different draws: no batch-shared randomness.
  assert len({float(d['brightness']) for d in draws}) == 6
  assert len({float(d['sigma']) for d in draws}) == 6
  assert 0 < sum(bool(d['blur']) for d in draws) <= 6
