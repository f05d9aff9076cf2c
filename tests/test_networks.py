"""Encoder and head shapes, parameter counts and structure."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from byol_jax import networks
from conftest import tiny_model_config


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init_shapes(module, shape, **kw):
  return jax.eval_shape(functools.partial(module.init, train=False, **kw),
                        jax.random.key(0), jnp.zeros(shape))


@pytest.mark.parametrize('depth,params', [
    # torchvision resnetXX parameter counts without the 1000-way classifier.
    (18, 11_689_512 - 513_000), (50, 25_557_032 - 2_049_000),
    (200, 64_673_832 - 2_049_000)])
def test_resnet_parameter_counts_match_torchvision(depth, params):
  v = _init_shapes(networks.ResNet(depth=depth), (1, 224, 224, 3))
  assert _count(v['params']) == params


@pytest.mark.parametrize('depth,width,stem,size,features', [
    (18, 0.25, 'small', 28, 128), (34, 1.0, 'small', 32, 512),
    (50, 1.0, 'imagenet', 64, 2048), (50, 2.0, 'imagenet', 64, 4096),
    (101, 0.125, 'imagenet', 32, 256)])
def test_resnet_output_shapes(depth, width, stem, size, features):
  net = networks.ResNet(depth=depth, width=width, stem=stem)
  assert net.num_features == features
  out = jax.eval_shape(
      lambda: net.init_with_output(jax.random.key(0),
                                   jnp.zeros((2, size, size, 3)),
                                   train=False)[0])
  assert out.shape == (2, features)


def test_stems_downsample_as_specified():
  """ImageNet stem: /4 before stage 1 (7x7/2 conv + 3x3/2 pool); small: /1;
  small_pool: /2 (3x3/1 conv + 3x3/2 pool)."""
  def stage1_hw(stem):
    net = networks.ResNet(depth=18, width=0.125, stem=stem)
    x = jnp.zeros((1, 32, 32, 3))
    _, state = jax.eval_shape(lambda: net.apply(  # Shapes only: no compile.
        net.init(jax.random.key(0), x, train=False), x, train=False,
        capture_intermediates=lambda m, _: m.name == 'stage1_block1',
        mutable=['intermediates']))
    return state['intermediates']['stage1_block1']['__call__'][0].shape[1:3]
  assert stage1_hw('imagenet') == (8, 8)
  assert stage1_hw('small') == (32, 32)
  assert stage1_hw('small_pool') == (16, 16)


def test_imagenet_stem_uses_same_padding():
  v = _init_shapes(networks.ResNet(depth=50), (1, 224, 224, 3))
  assert v['params']['stem_conv']['kernel'].shape == (7, 7, 3, 64)


def test_byol_heads_match_the_paper():
  cfg = ml_collections.ConfigDict(dict(
      depth=18, width=0.125, stem='small', head='byol',
      projector_hidden=(4096,), predictor_hidden=(4096,), projection_dim=256,
      use_predictor=True))
  v = _init_shapes(networks.build_network(cfg, 10), (2, 32, 32, 3))['params']
  proj, pred = v['projector'], v['predictor']
  assert proj['linear1']['kernel'].shape == (64, 4096)
  assert proj['linear1']['bias'].shape == (4096,)       # Linear with bias
  assert set(proj['bn1']) == {'scale', 'bias'}          # BN -> ReLU
  assert proj['linear_out']['kernel'].shape == (4096, 256)
  assert 'bn_out' not in proj                           # no BN on the output
  assert pred['linear1']['kernel'].shape == (256, 4096)
  assert pred['linear_out']['kernel'].shape == (4096, 256)
  assert v['probe']['kernel'].shape == (64, 10)


def test_simsiam_heads_match_the_paper():
  cfg = ml_collections.ConfigDict(dict(
      depth=50, width=1.0, stem='imagenet', head='simsiam',
      projector_hidden=(2048, 2048), predictor_hidden=(512,),
      projection_dim=2048, use_predictor=True))
  v = _init_shapes(networks.build_network(cfg, 1000), (2, 64, 64, 3))
  proj, pred = v['params']['projector'], v['params']['predictor']
  for i in (1, 2):
    assert set(proj[f'linear{i}']) == {'kernel'}        # no bias
  assert set(proj['linear_out']) == {'kernel'}
  assert 'bn_out' not in proj                           # BN without affine...
  assert 'bn_out' in v['batch_stats']['projector']      # ...but with stats
  assert proj['linear1']['kernel'].shape == (2048, 2048)
  assert pred['linear1']['kernel'].shape == (2048, 512)
  assert set(pred['linear1']) == {'kernel'}
  assert pred['linear_out']['kernel'].shape == (512, 2048)
  assert 'bias' in pred['linear_out']


def test_target_call_skips_the_predictor_and_probe_sees_no_gradient():
  net = networks.build_network(tiny_model_config(), num_classes=3)
  x = jnp.ones((4, 8, 8, 1))
  v = net.init(jax.random.key(0), x, train=False)
  out = net.apply(v, x, train=False, predict=False)
  assert 'prediction' not in out and out['projection'].shape == (4, 8)

  def probe_only(params):
    logits = net.apply({**v, 'params': params}, x, train=False)['logits']
    return jnp.sum(logits ** 2)
  grads = jax.grad(probe_only)(v['params'])
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads['encoder']))
  assert np.abs(grads['probe']['kernel']).sum() > 0


def test_bfloat16_compute_with_float32_params_stats_and_outputs():
  """compute_dtype='bfloat16': activations in bf16, but params, BatchNorm
  statistics, gradients and every output (so every loss) in float32."""
  cfg = tiny_model_config()
  cfg.compute_dtype = 'bfloat16'
  net = networks.build_network(cfg, num_classes=3)
  x = jnp.asarray(np.random.RandomState(0).randn(4, 8, 8, 1), jnp.float32)
  v = net.init(jax.random.key(0), x, train=False)
  out, mutated = net.apply(v, x, train=True, mutable=['batch_stats'])
  grads = jax.grad(lambda p: jnp.sum(net.apply(
      {**v, 'params': p}, x, train=True,
      mutable=['batch_stats'])[0]['prediction']))(v['params'])
  for tree in (v['params'], mutated['batch_stats'], grads, out):
    assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {
        jnp.dtype('float32')}
  ref = networks.build_network(tiny_model_config(), num_classes=3).apply(
      v, x, train=True, mutable=['batch_stats'])[0]
  a, b = np.asarray(out['projection']), np.asarray(ref['projection'])
  cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b,
                                                                      axis=1)
  assert cosine.min() > 0.98, cosine          # The same function, to bf16...
  assert not np.allclose(a, b, atol=1e-6)     # ...computed in bf16.
  # The bf16 network really computes in bf16: a conv's output dtype.
  _, inter = net.apply(v, x, train=False, capture_intermediates=lambda m, _:
                       m.name == 'stem_conv', mutable=['intermediates'])
  conv_out = jax.tree.leaves(inter['intermediates'])[0]
  assert conv_out.dtype == jnp.bfloat16


def _assert_equals_xla_conv(conv, x, k, strides, padding, atol=1e-4):
  """conv's outputs and gradients of sum(sin(y)) w.r.t. input and kernel
  equal lax.conv_general_dilated's; returns the output."""
  def run(conv):
    def loss(x, k):
      y = conv(x, k, strides, padding,
               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      return jnp.sum(jnp.sin(y)), y
    (_, y), grads = jax.jit(
        jax.value_and_grad(loss, (0, 1), has_aux=True))(x, k)
    return y, grads

  y_ref, g_ref = run(jax.lax.conv_general_dilated)
  y, g = run(conv)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=atol, rtol=1e-5)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)
  return y


@pytest.mark.parametrize('kernel,stride,size', [
    (3, 1, 7), (3, 2, 8), (1, 2, 7), (7, 2, 11)])
def test_matmul_conv_equals_xla_conv_values_and_gradients(kernel, stride, size):
  """Same SAME-padding arithmetic as lax (odd and even sides, strides 1/2,
  the 1x1/2 shortcut, the 7x7/2 stem), same outputs and gradients w.r.t.
  input and kernel."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  k = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 5))
  y = _assert_equals_xla_conv(networks.matmul_conv, x, k, (stride, stride),
                              'SAME')
  assert y.shape == (2, -(-size // stride), -(-size // stride), 5)


WINOGRAD_CONVS = {2: networks.winograd_conv, 4: networks.winograd4_conv}


@pytest.mark.parametrize('tile', [2, 4])
@pytest.mark.parametrize('size,padding', [
    (8, 'SAME'), (7, 'SAME'), (1, 'SAME'), (2, 'SAME'), (6, 'VALID'),
    (9, 'SAME'), (5, ((2, 0), (0, 1)))])
def test_winograd_conv_equals_xla_conv_values_and_gradients(size, padding,
                                                            tile):
  """Winograd F(2x2, 3x3) and F(4x4, 3x3): sides that are and are not
  multiples of the tile (a partial last tile), 1x1 and 2x2 inputs (the
  last stages of a small ResNet), VALID and asymmetric pads; outputs and
  gradients w.r.t. input and kernel equal the direct convolution's to
  float32 rounding (F(4x4, 3x3)'s is larger: the kernel gradient, sums of
  ~200 products of size ~10 here, differs by up to ~1.1e-4)."""
  x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 3, 5))
  conv = WINOGRAD_CONVS[tile]
  _assert_equals_xla_conv(conv, x, k, (1, 1), padding,
                          atol=1e-4 if tile == 2 else 4e-4)
  # It is not XLA's convolution under another name: none in its program.
  jaxpr = jax.make_jaxpr(lambda x, k: conv(x, k, (1, 1), padding))(x, k)
  assert 'conv_general_dilated' not in str(jaxpr)


@pytest.mark.parametrize('tile,bound', [(2, 2e-6), (4, 1e-5)])
def test_winograd_conv_rounding_on_a_64_channel_layer(tile, bound):
  """Against a float64 direct convolution in numpy (a sum of the 9 shifted
  slices times the kernel taps), the whole tensor's relative error: F(2x2,
  3x3) at float32 rounding, F(4x4, 3x3) within 1e-5 (its larger transform
  coefficients amplify rounding; measured ~3e-6 on this layer)."""
  rng = np.random.RandomState(0)
  x = rng.randn(2, 8, 8, 64)
  k = rng.randn(3, 3, 64, 64) * np.sqrt(2 / (9 * 64))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = sum(np.einsum('nhwc,co->nhwo', xp[:, i:i + 8, j:j + 8], k[i, j])
            for i in range(3) for j in range(3))
  y = np.asarray(WINOGRAD_CONVS[tile](
      jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32), (1, 1),
      'SAME'), np.float64)
  err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
  assert 1e-9 < err < bound


def test_winograd_conv_refuses_what_it_does_not_compute():
  x = jnp.zeros((1, 4, 4, 2))
  for k, s in [((1, 1, 2, 2), (1, 1)), ((3, 3, 2, 2), (2, 2)),
               ((5, 5, 2, 2), (1, 1))]:
    with pytest.raises(NotImplementedError, match="conv_impl='xla'"):
      networks.winograd_conv(x, jnp.zeros(k), s, 'SAME')
    assert not networks.winograd_applies(k, s)
  assert networks.winograd_applies((3, 3, 2, 2), (1, 1))
  with pytest.raises(ValueError, match='tile=3'):
    networks.winograd_conv(x, jnp.zeros((3, 3, 2, 2)), (1, 1), 'SAME',
                           tile=3)


def _max_pool_reference(x, g, window, strides):
  """numpy, one output at a time: TF 'SAME' padding with -inf, the max of
  each window, and the window's gradient to its first maximal element in
  row-major order (what XLA's select-and-scatter and torch's max_pool2d
  choose); also the number of windows whose maximum is not unique."""
  n, h, w, c = x.shape
  (kh, kw), (sh, sw) = window, strides
  pads = []
  for size, k, s in ((h, kh, sh), (w, kw, sw)):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    pads.append((out, total // 2, total - total // 2))
  (ho, ph, ph1), (wo, pw, pw1) = pads
  xp = np.pad(x, ((0, 0), (ph, ph1), (pw, pw1), (0, 0)),
              constant_values=-np.inf)
  y = np.zeros((n, ho, wo, c), x.dtype)
  dxp = np.zeros(xp.shape, np.float64)
  ties = 0
  for b in range(n):
    for i in range(ho):
      for j in range(wo):
        for ch in range(c):
          win = xp[b, i * sh:i * sh + kh, j * sw:j * sw + kw, ch]
          first = int(np.argmax(win))  # argmax: the first of equal maxima.
          y[b, i, j, ch] = win.max()
          ties += int((win == win.max()).sum() > 1)
          dxp[b, i * sh + first // kw, j * sw + first % kw, ch] += (
              g[b, i, j, ch])
  return y, dxp[:, ph:ph + h, pw:pw + w], ties


@pytest.mark.parametrize('shape,window,strides', [
    ((2, 8, 8, 3), (3, 3), (2, 2)),   # The stems' pool, an even side.
    ((2, 7, 9, 2), (3, 3), (2, 2)),   # Odd sides: uneven 'SAME' pads.
    ((2, 2, 3, 3), (3, 3), (2, 2)),   # Windows mostly padding.
    ((2, 6, 6, 2), (2, 2), (2, 2)),   # No padding, no overlap.
    ((2, 5, 5, 2), (3, 3), (1, 1)),   # Stride 1: every window overlaps.
    ((2, 7, 7, 2), (1, 2), (3, 2)),   # A stride above the window.
])
def test_max_pool_values_and_gradients_equal_the_reference(shape, window,
                                                           strides):
  """networks.max_pool against the numpy reference and flax's nn.max_pool
  (XLA's gradient): equal values and input gradients, on inputs with many
  ties (a ReLU's zeros and positive plateaus, as constant image regions
  give), where a gradient that split or duplicated a window's share would
  differ."""
  rng = np.random.RandomState(0)
  x = np.maximum(np.round(rng.randn(*shape) * 2) / 2, 0).astype(np.float32)
  ho = -(-shape[1] // strides[0])
  wo = -(-shape[2] // strides[1])
  g = rng.randn(shape[0], ho, wo, shape[3]).astype(np.float32)
  y_ref, dx_ref, ties = _max_pool_reference(x, g, window, strides)

  def run(pool):
    y, vjp = jax.vjp(lambda x: pool(x, window, strides), jnp.asarray(x))
    return np.asarray(y), np.asarray(vjp(jnp.asarray(g))[0])
  y, dx = run(networks.max_pool)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)
  _, dx_flax = run(lambda x, w, s: nn.max_pool(x, w, s, padding='SAME'))
  np.testing.assert_allclose(dx, dx_flax, rtol=1e-6, atol=1e-6)
  assert ties > 0  # Some windows have more than one maximum.


def test_max_pool_gradient_on_cpu_builds_no_index_arrays():
  """On CPU, XLA computes JAX's own max-pool gradient as a variadic
  reduce-window over int32 iotas of the input's size, rebuilt every step; networks.max_pool's gradient
  has none, in a bfloat16 network too."""
  for dtype in (jnp.float32, jnp.bfloat16):
    x = jnp.zeros((4, 28, 28, 8), dtype)
    def hlo(pool):
      grad = jax.grad(lambda x: jnp.sum(pool(x, (3, 3), (2, 2))
                                        .astype(jnp.float32)))
      return jax.jit(grad).lower(x).compile().as_text()
    flax_hlo = hlo(lambda x, w, s: nn.max_pool(x, w, s, padding='SAME'))
    ours = hlo(networks.max_pool)
    assert 'iota' in flax_hlo and 's32[4,29,29,8]' in flax_hlo
    assert 'iota' not in ours and 's32[' not in ours
    assert 'scatter' not in ours


@pytest.mark.parametrize('impl', ['matmul', 'winograd', 'winograd4'])
@pytest.mark.parametrize('block', ['BasicBlock', 'BottleneckBlock'])
def test_matmul_conv_blocks_are_the_same_network(block, impl):
  """conv_impl changes how, not what: the same parameters (same tree, so a
  checkpoint of one loads into the other) give the same outputs, here for
  the downsampling block of each ResNet family."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 6))
  norm = functools.partial(nn.BatchNorm, use_running_average=False)
  cls = getattr(networks, block)
  ref = cls(filters=4, strides=2, norm=norm, projection=True)
  mm = cls(filters=4, strides=2, norm=norm, conv_impl=impl,
           projection=True)
  variables = ref.init(jax.random.key(1), x)
  assert (jax.tree.structure(variables) == jax.tree.structure(
      jax.eval_shape(mm.init, jax.random.key(1), x)))

  def apply(module):
    return jax.jit(lambda v, x: module.apply(v, x, mutable=['batch_stats']))(
        variables, x)
  (y_ref, s_ref), (y, s) = apply(ref), apply(mm)
  np.testing.assert_allclose(y, y_ref, atol=1e-4, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               s, s_ref)
  with pytest.raises(ValueError, match='conv_impl'):
    networks.conv_module('cudnn')


def test_matmul_conv_refuses_what_it_does_not_implement():
  x, k = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(NotImplementedError, match="conv_impl='xla'"):
    networks.matmul_conv(x, k, (1, 1), 'SAME', rhs_dilation=(2, 2))
  with pytest.raises(NotImplementedError, match="conv_impl='xla'"):
    networks.matmul_conv(x, k, (1, 1), 'SAME',
                         dimension_numbers=('NCHW', 'HWIO', 'NCHW'))


@pytest.mark.parametrize('depth', [18, 50])
def test_official_shortcuts_project_every_stage_first_block(depth):
  """torchvision's layout projects a shortcut only where the shape changes;
  the official BYOL ResNet (Haiku BlockGroup) in every stage's first block.
  They differ in ResNet-18's layer1 alone; ResNet-50 is the same tree."""
  def shortcuts(official):
    net = networks.ResNet(depth=depth, width=1 / 16, stem='imagenet',
                          official_shortcuts=official)
    params = jax.eval_shape(functools.partial(net.init, train=False),
                            jax.random.key(0),
                            jnp.zeros((1, 32, 32, 3)))['params']
    return sorted(k for k, v in params.items() if 'shortcut_conv' in v)
  first = ['stage1_block1', 'stage2_block1', 'stage3_block1', 'stage4_block1']
  assert shortcuts(True) == first
  assert shortcuts(False) == (first if depth == 50 else first[1:])


def test_batchnorm_running_stats_forget_their_start():
  """flax's BatchNorm does not zero-debias (Haiku's does): after k updates
  at decay 0.9 the running mean holds (1 - 0.9^k) of the batch mean and the
  variance 0.9^k of its start (1). By step 50 the start is 0.5%."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  bn = nn.BatchNorm(use_running_average=False, momentum=networks.BN_MOMENTUM,
                    epsilon=networks.BN_EPSILON)
  x = 5.0 + 2.0 * jax.random.normal(jax.random.key(0), (4096, 3))
  mean, var = jnp.mean(x, 0), jnp.var(x, 0)
  variables = bn.init(jax.random.key(1), x)
  step = jax.jit(lambda v: bn.apply(v, x, mutable=['batch_stats'])[1])
  for k in range(1, 51):
    variables = {**variables, 'batch_stats': step(variables)['batch_stats']}
    if k in (10, 50):
      stats = variables['batch_stats']
      np.testing.assert_allclose(stats['mean'], (1 - 0.9**k) * mean,
                                 rtol=1e-4)
      np.testing.assert_allclose(stats['var'], 0.9**k + (1 - 0.9**k) * var,
                                 rtol=1e-4)
