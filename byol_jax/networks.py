"""Networks: ResNet encoders and the BYOL / SimSiam heads (flax linen).

Shape contract: images are NHWC float arrays; `SSLNetwork` returns a dict with
  'embedding'  (N, C_enc)  the encoder's pooled output (what evaluation uses),
  'projection' (N, D)      projector output z,
  'prediction' (N, D)      predictor output q(z) (only if a predictor is used),
  'logits'     (N, K)      online linear probe on stop_gradient(embedding).

BatchNorm takes `axis_name`: inside the mapped train step the statistics are
averaged over that named device axis, i.e. computed over the global batch.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# ResNet depth -> (block kind, blocks per stage). He et al. 2016, Table 1.
RESNET_LAYOUTS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
    200: ('bottleneck', (3, 24, 36, 3)),
}
STEMS = ('imagenet', 'small', 'small_pool')

# BN decay 0.9 and eps 1e-5 as in the official BYOL code (byol/configs/byol.py).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# 'auto': each layer runs the implementation measured fastest for its shape
# on this machine (byol_jax.conv_autotune); XLA's on GPU/TPU.
CONV_IMPLS = ('auto', 'xla', 'matmul', 'winograd', 'winograd4')


def _nhwc_pads(name, lhs, rhs, window_strides, padding, lhs_dilation,
               rhs_dilation, dimension_numbers, feature_group_count):
  """Explicit ((top, bottom), (left, right)) pads of an NHWC x HWIO
  convolution without dilation or groups; NotImplementedError otherwise."""
  dims = jax.lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers or ('NHWC', 'HWIO', 'NHWC'))
  if (dims != jax.lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
      or feature_group_count != 1
      or any(d != 1 for d in tuple(lhs_dilation or ())
             + tuple(rhs_dilation or ()))):
    raise NotImplementedError(
        f'{name} handles NHWC x HWIO without dilation or groups; use '
        "model.conv_impl='xla'.")
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2],
                                      window_strides, padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def matmul_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                rhs_dilation=None, dimension_numbers=None,
                feature_group_count=1, precision=None,
                preferred_element_type=None):
  """`lax.conv_general_dilated` for NHWC x HWIO as one matmul over patches.

  The kh*kw shifted (strided) slices of the padded input are concatenated on
  the channel axis, (N, Ho, Wo, kh*kw*Cin), and multiplied by the kernel
  reshaped to (kh*kw*Cin, Cout). Its backward pass is two matmuls plus pads
  and slices, which XLA's CPU backend runs up to 4.7x faster than its
  convolution backward on some layers and CPUs and slower on others
  (benchmarks/conv_impl.py): model.conv_impl='auto' times both per layer
  shape (conv_autotune). It costs kh*kw times the input's memory.
  Same parameters as `nn.Conv`, so checkpoints move freely between the two.
  """
  del precision
  padding = _nhwc_pads('matmul_conv', lhs, rhs, window_strides, padding,
                       lhs_dilation, rhs_dilation, dimension_numbers,
                       feature_group_count)
  kh, kw, cin, cout = rhs.shape
  _, h, w, _ = lhs.shape
  sh, sw = window_strides
  (pt, pb), (pl, pr) = padding
  x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho = (h + pt + pb - kh) // sh + 1
  wo = (w + pl + pr - kw) // sw + 1
  patches = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
             for i in range(kh) for j in range(kw)]
  patches = patches[0] if len(patches) == 1 else jnp.concatenate(patches, -1)
  return jnp.einsum('nhwk,ko->nhwo', patches,
                    rhs.reshape(kh * kw * cin, cout),
                    preferred_element_type=preferred_element_type)


# Winograd minimal filtering F(m x m, 3x3) (Lavin & Gray 2016, "Fast
# Algorithms for Convolutional Neural Networks", eq. 8):
# Y = A^T [(G g G^T) * (B^T d B)] A for each (m+2)x(m+2) input tile d
# (stride m) and m x m output tile Y. m=2: interpolation points 0, +-1;
# m=4: 0, +-1, +-2 (their Table 2 / eq. 12), and the point at infinity.
_WINOGRAD = {  # m: (B^T, G, A^T)
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0],
                  [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]],
                 np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
}


def winograd_applies(rhs_shape, window_strides) -> bool:
  """Whether `winograd_conv` computes this convolution (3x3, stride 1)."""
  return (tuple(rhs_shape[:2]) == (3, 3)
          and tuple(window_strides) == (1, 1))


def _overlapping_tiles(x, axis: int, m: int, tiles: int):
  """`axis` of length m * (tiles + 1) -> (tiles, m + 2): tile t holds rows
  [m t, m t + m + 2). Reshapes and one concatenation, no strided slices
  (whose transposes, in the backward pass, XLA's CPU backend runs slowly)."""
  blocks = x.reshape(x.shape[:axis] + (tiles + 1, m) + x.shape[axis + 1:])
  head = jax.lax.slice_in_dim(blocks, 0, tiles, axis=axis)
  tail = jax.lax.slice_in_dim(
      jax.lax.slice_in_dim(blocks, 1, tiles + 1, axis=axis), 0, 2,
      axis=axis + 1)
  return jnp.concatenate([head, tail], axis + 1)


def winograd_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                  rhs_dilation=None, dimension_numbers=None,
                  feature_group_count=1, precision=None,
                  preferred_element_type=None, *, tile: int = 2):
  """`lax.conv_general_dilated` for a 3x3 stride-1 NHWC x HWIO convolution
  by Winograd's minimal filtering F(tile x tile, 3x3) (Lavin & Gray 2016).

  The padded input is cut into (tile+2)^2 tiles at stride `tile`, one per
  tile x tile block of output. Per tile and channel the transform B^T d B
  is one matmul of the (tile+2)^2 tile values by kron(B^T, B^T); the
  transformed tiles meet the transformed kernel (G g G^T) in (tile+2)^2
  matmuls of (tiles, Cin) x (Cin, Cout), and kron(A^T, A^T) folds them back
  into outputs. Multiplications in those matmuls against the direct
  convolution's: 2.25x fewer with tile=2, 4x fewer with tile=4, in the
  forward pass and in both gradients (autodiff through the same linear
  maps); the transformed tiles hold 4x (tile=2) or 2.25x (tile=4) the
  input's and output's memory. Writing the transforms as matmuls over
  tiles cut by reshapes is what makes them cheap on XLA's CPU backend
  (elementwise sums of strided slices ran at a third of memory speed).
  Float32 agreement with the direct convolution (relative, whole tensor):
  ~5e-7 with tile=2, ~3e-6 with tile=4 (its interpolation points +-2 and
  G's 1/6 and 1/24 amplify rounding, as the paper notes); in bfloat16
  both are worse than the direct convolution, so 'auto' considers them for
  float32 layers only. Same parameters as `nn.Conv`.
  """
  del precision
  (pt, pb), (pl, pr) = _nhwc_pads(
      'winograd_conv', lhs, rhs, window_strides, padding, lhs_dilation,
      rhs_dilation, dimension_numbers, feature_group_count)
  if not winograd_applies(rhs.shape, window_strides):
    raise NotImplementedError(
        'winograd_conv handles 3x3 stride-1 convolutions, not '
        f'{rhs.shape[0]}x{rhs.shape[1]}/{tuple(window_strides)}; use '
        "model.conv_impl='xla'.")
  if tile not in _WINOGRAD:
    raise ValueError(f'winograd_conv: tile={tile!r}, use one of '
                     f'{tuple(_WINOGRAD)}.')
  bt, g, at = _WINOGRAD[tile]
  a = tile + 2
  n, h, w, cin = lhs.shape
  cout = rhs.shape[-1]
  ho, wo = h + pt + pb - 2, w + pl + pr - 2
  th, tw = -(-ho // tile), -(-wo // tile)  # Tiles; a partial one is padded.
  # tiles + 1 blocks a side: the last tile's 2 extra rows are the next
  # block's first (zeros past the pads; they meet only cropped outputs).
  x = jnp.pad(lhs, ((0, 0), (pt, tile * (th + 1) - h - pt),
                    (pl, tile * (tw + 1) - w - pl), (0, 0)))
  d = _overlapping_tiles(_overlapping_tiles(x, 1, tile, th), 3, tile, tw)
  # (n, th, a, tw, a, cin) -> (a*a, n*th*tw*cin): a tile's values on rows.
  d = d.transpose(2, 4, 0, 1, 3, 5).reshape(a * a, -1)
  v = (jnp.asarray(np.kron(bt, bt), lhs.dtype) @ d).reshape(a * a, -1, cin)
  gk = jnp.asarray(g, rhs.dtype)
  u = jnp.einsum('ai,ijco,bj->abco', gk, rhs, gk).reshape(a * a, cin, cout)
  m = jnp.einsum('tpc,tco->tpo', v, u,
                 preferred_element_type=preferred_element_type)
  y = jnp.asarray(np.kron(at, at), m.dtype) @ m.reshape(a * a, -1)
  # (tile, tile, n, th, tw, cout) -> (n, th, tile, tw, tile, cout).
  y = y.reshape(tile, tile, n, th, tw, cout).transpose(2, 3, 0, 4, 1, 5)
  return y.reshape(n, tile * th, tile * tw, cout)[:, :ho, :wo]


def winograd4_conv(lhs, rhs, window_strides, padding, *args, **kwargs):
  """`winograd_conv` with F(4x4, 3x3): 4x fewer multiplications than the
  direct convolution and 2.25x-sized tiles (F(2x2, 3x3): 2.25x and 4x), at
  ~6x F(2x2, 3x3)'s rounding error (still ~3e-6 relative in float32)."""
  return winograd_conv(lhs, rhs, window_strides, padding, *args, tile=4,
                       **kwargs)


# What a `planned_conv` plan may name, besides 'xla'.
PLANNED_CONVS = {'matmul': matmul_conv, 'winograd': winograd_conv,
                 'winograd4': winograd4_conv}


def conv_signature(lhs_shape, rhs_shape, window_strides, padding,
                   dtype) -> tuple:
  """What decides a convolution's speed, the batch left out (a choice made
  at the training batch also serves the evaluation batches): (H, W, Cin,
  kh, kw, Cout, strides, explicit pads, dtype) of an NHWC x HWIO conv."""
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2],
                                      window_strides, padding)
  return (tuple(int(d) for d in lhs_shape[1:]),
          tuple(int(d) for d in rhs_shape),
          tuple(int(s) for s in window_strides),
          tuple((int(lo), int(hi)) for lo, hi in padding),
          jnp.dtype(dtype).name)


def planned_conv(lhs, rhs, window_strides, padding, *args, plan=(),
                 **kwargs):
  """`lax.conv_general_dilated`, or what `plan` (pairs of
  (`conv_signature`, a `PLANNED_CONVS` name)) names for this shape; shapes
  not in the plan run XLA's."""
  sig = conv_signature(lhs.shape, rhs.shape, window_strides, padding,
                       lhs.dtype)
  conv = PLANNED_CONVS.get(dict(plan).get(sig), jax.lax.conv_general_dilated)
  return conv(lhs, rhs, window_strides, padding, *args, **kwargs)


def winograd_where_it_applies(lhs, rhs, window_strides, padding, *args,
                              tile: int = 2, **kwargs):
  """`winograd_conv` F(tile x tile, 3x3) for the 3x3 stride-1 layers,
  XLA's for the others."""
  if winograd_applies(rhs.shape, window_strides):
    return winograd_conv(lhs, rhs, window_strides, padding, *args, tile=tile,
                         **kwargs)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                      *args, **kwargs)


def conv_module(impl: str, plan: tuple = ()):
  """`nn.Conv` computed by XLA's convolution ('xla'), `matmul_conv`
  ('matmul'), `winograd_conv` F(2x2, 3x3) or F(4x4, 3x3) where it applies
  ('winograd', 'winograd4') or, per layer shape, the one `plan` names
  ('auto')."""
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={impl!r}: use one of {CONV_IMPLS}.')
  if impl == 'xla' or (impl == 'auto' and not plan):
    return nn.Conv
  conv = {'auto': functools.partial(planned_conv, plan=plan),
          'matmul': matmul_conv,
          'winograd': winograd_where_it_applies,
          'winograd4': functools.partial(winograd_where_it_applies, tile=4),
          }[impl]
  return functools.partial(nn.Conv, conv_general_dilated=conv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_planes(x, window, strides):
  return nn.max_pool(x, window, strides, padding='SAME')


def _max_pool_planes_fwd(x, window, strides):
  y = _max_pool_planes(x, window, strides)
  return y, (x, y)


def _max_pool_planes_bwd(window, strides, residuals, g):
  """Each output's gradient to the first maximal element of its window
  (row-major), as XLA's select-and-scatter. Window offset d of output o
  lands on padded input s * o + d = s * (o + d // s) + d % s, so the
  gradient is s_h * s_w interleaved planes, each a sum of a few
  one-element shifts of the masked output gradient: elementwise work that
  XLA fuses, no scatter."""
  x, y = residuals
  (kh, kw), (sh, sw) = window, strides
  n, h, w, c = x.shape
  _, ho, wo, _ = y.shape
  (ph, _), (pw, _) = jax.lax.padtype_to_pads((h, w), window, strides, 'SAME')
  qh, qw = (kh - 1) // sh, (kw - 1) // sw  # A window's furthest shift.
  # Padded to the planes' extent, which covers 'SAME''s padding.
  xp = jnp.pad(x, ((0, 0), (ph, (ho + qh) * sh - h - ph),
                   (pw, (wo + qw) * sw - w - pw), (0, 0)),
               constant_values=-jnp.inf)
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)
  planes = {}
  for di in range(kh):
    for dj in range(kw):
      xk = jax.lax.slice(
          xp, (0, di, dj, 0),
          (n, di + (ho - 1) * sh + 1, dj + (wo - 1) * sw + 1, c),
          (1, sh, sw, 1))
      hit = (xk == y) & ~taken
      taken = taken | hit
      a, b = di // sh, dj // sw
      gk = jax.lax.pad(jnp.where(hit, g, zero), zero,
                       ((0, 0, 0), (a, qh - a, 0), (b, qw - b, 0), (0, 0, 0)))
      r = (di % sh, dj % sw)
      planes[r] = planes[r] + gk if r in planes else gk
  empty = jnp.zeros((n, ho + qh, wo + qw, c), g.dtype)  # Only if s > k.
  dxp = jnp.stack([jnp.stack([planes.get((i, j), empty) for j in range(sw)],
                             3) for i in range(sh)], 2)
  dxp = dxp.reshape(n, (ho + qh) * sh, (wo + qw) * sw, c)
  return (dxp[:, ph:ph + h, pw:pw + w],)


_max_pool_planes.defvjp(_max_pool_planes_fwd, _max_pool_planes_bwd)


def max_pool(x, window: tuple[int, int], strides: tuple[int, int]):
  """`nn.max_pool(x, window, strides, padding='SAME')` (NHWC), the same
  values and gradients.

  On CPU the gradient is computed by `_max_pool_planes_bwd`: JAX's own
  gradient of a max-pool lowers there to a variadic reduce-window over one
  int32 iota per input dimension, materialised at the input's size every
  step (4 x 105 MB per ResNet-50 stem pool at batch 32): the demo's BYOL
  step ran at 0.94x PyTorch with it, 1.24x without
  (`benchmarks/train_step.py --cases=demo --pools=planes,xla`). Other
  platforms keep XLA's select-and-scatter.
  """
  return jax.lax.platform_dependent(
      x, cpu=lambda x: _max_pool_planes(x, tuple(window), tuple(strides)),
      default=lambda x: nn.max_pool(x, window, strides, padding='SAME'))


# He initialisation (fan_out), the torchvision / official-code convention for
# convolutions followed by BatchNorm + ReLU.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class BasicBlock(nn.Module):
  """ResNet v1 basic block: 3x3 -> 3x3, for ResNet-18/34; `projection`: a
  1x1 conv + BatchNorm shortcut instead of the identity."""
  filters: int
  strides: int
  norm: Any
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  projection: bool = False
  conv_plan: tuple = ()

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(conv_module(self.conv_impl, self.conv_plan),
                             use_bias=False,
                             padding='SAME',
                             kernel_init=conv_init, dtype=self.dtype)
    residual = x
    y = conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = conv(self.filters, (3, 3))(y)
    y = self.norm()(y)
    if self.projection:
      residual = conv(self.filters, (1, 1), (self.strides, self.strides),
                      name='shortcut_conv')(residual)
      residual = self.norm(name='shortcut_bn')(residual)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """ResNet v1 bottleneck: 1x1 -> 3x3 (strided, as in the official code) -> 1x1 (x4)."""
  filters: int
  strides: int
  norm: Any
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  projection: bool = False
  conv_plan: tuple = ()

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(conv_module(self.conv_impl, self.conv_plan),
                             use_bias=False,
                             padding='SAME',
                             kernel_init=conv_init, dtype=self.dtype)
    residual = x
    y = nn.relu(self.norm()(conv(self.filters, (1, 1))(x)))
    y = conv(self.filters, (3, 3), (self.strides, self.strides))(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(conv(self.filters * 4, (1, 1))(y))
    if self.projection:
      residual = conv(self.filters * 4, (1, 1), (self.strides, self.strides),
                      name='shortcut_conv')(residual)
      residual = self.norm(name='shortcut_bn')(residual)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet v1 encoder without classifier; returns globally pooled features.

  Attributes:
    depth: 18, 34, 50, 101, 152 or 200.
    width: channel multiplier (1..4 as in the paper, or fractional, e.g. 0.25
      gives 16-32-64-128 channels for a ResNet-18 on CPU).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool, TF 'SAME' padding),
      'small' (3x3/1 conv, no pool; the CIFAR-style stem for 28-32 px inputs)
      or 'small_pool' (3x3/1 conv + 3x3/2 max-pool: stage 1 at half the
      input side, 4x fewer FLOPs than 'small'; the CPU demo's stem).
    conv_impl: 'xla' (lax.conv_general_dilated), 'matmul' (`matmul_conv`),
      'winograd' / 'winograd4' (`winograd_conv`, F(2x2, 3x3) / F(4x4, 3x3),
      for the 3x3 stride-1 layers; all of them have the same parameters and
      outputs) or 'auto': per layer shape, what `conv_plan` names
      (`conv_autotune.plan` measures it; XLA's without).
    conv_plan: pairs of (`conv_signature`, a `PLANNED_CONVS` name) for
      'auto'.
    official_shortcuts: a projection shortcut (1x1 conv + BatchNorm) in the
      first block of every stage, as the official BYOL ResNet (Haiku's
      BlockGroup: use_projection for block 0); False (torchvision's layout)
      projects only where the shape changes. They differ only for
      ResNet-18/34, whose first block keeps its shape; official ResNet-18/34
      checkpoints need True (`official_weights` sets it).
  """
  depth: int = 50
  width: float = 1.0
  stem: str = 'imagenet'
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  conv_impl: str = 'xla'
  conv_plan: tuple = ()
  official_shortcuts: bool = False

  @property
  def num_features(self) -> int:
    kind, _ = RESNET_LAYOUTS[self.depth]
    return int(64 * self.width) * 8 * (4 if kind == 'bottleneck' else 1)

  @nn.compact
  def __call__(self, x, train: bool):
    kind, stages = RESNET_LAYOUTS[self.depth]
    block_cls = BasicBlock if kind == 'basic' else BottleneckBlock
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON, axis_name=self.bn_axis_name, dtype=self.dtype)
    base = int(64 * self.width)
    if base < 1:
      raise ValueError(f'width={self.width} gives no channels; use >= 1/64.')
    x = x.astype(self.dtype)
    conv = conv_module(self.conv_impl, self.conv_plan)
    if self.stem == 'imagenet':
      x = conv(base, (7, 7), (2, 2), padding='SAME', use_bias=False,
                  kernel_init=conv_init, dtype=self.dtype, name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
      x = max_pool(x, (3, 3), (2, 2))
    else:
      x = conv(base, (3, 3), (1, 1), padding='SAME', use_bias=False,
                  kernel_init=conv_init, dtype=self.dtype, name='stem_conv')(x)
      x = nn.relu(norm(name='stem_bn')(x))
      if self.stem == 'small_pool':
        x = max_pool(x, (3, 3), (2, 2))
    expansion = 4 if kind == 'bottleneck' else 1
    for i, num_blocks in enumerate(stages):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        reshapes = strides != 1 or x.shape[-1] != base * 2**i * expansion
        x = block_cls(base * 2**i, strides, norm, self.dtype, self.conv_impl,
                      projection=reshapes or (j == 0
                                              and self.official_shortcuts),
                      conv_plan=self.conv_plan,
                      name=f'stage{i + 1}_block{j + 1}')(x)
    return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)


class MLPHead(nn.Module):
  """Linear -> BN -> ReLU blocks, then a final Linear (and optional BN).

  BYOL projector/predictor: hidden=(4096,), out 256, bias everywhere, no BN on
  the output. SimSiam projector: hidden=(2048, 2048), out 2048, no bias,
  output BN without affine parameters. SimSiam predictor: hidden=(512,),
  out 2048, bias only on the output layer.
  """
  hidden: Sequence[int]
  out: int
  hidden_bias: bool = True
  out_bias: bool = True
  out_bn: bool = False
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON, axis_name=self.bn_axis_name, dtype=self.dtype)
    for i, h in enumerate(self.hidden):
      x = nn.Dense(h, use_bias=self.hidden_bias, dtype=self.dtype,
                   name=f'linear{i + 1}')(x)
      x = nn.relu(norm(name=f'bn{i + 1}')(x))
    x = nn.Dense(self.out, use_bias=self.out_bias, dtype=self.dtype,
                 name='linear_out')(x)
    if self.out_bn:
      x = norm(use_scale=False, use_bias=False, name='bn_out')(x)
    return x.astype(jnp.float32)


HEAD_PRESETS = {
    # (projector kwargs, predictor kwargs); sizes are overridable by config.
    'byol': (dict(hidden_bias=True, out_bias=True, out_bn=False),
             dict(hidden_bias=True, out_bias=True, out_bn=False)),
    'simsiam': (dict(hidden_bias=False, out_bias=False, out_bn=True),
                dict(hidden_bias=False, out_bias=True, out_bn=False)),
}


class SSLNetwork(nn.Module):
  """Encoder -> projector -> (predictor), plus the online linear probe.

  The same module serves as online and target network; the target is called
  with `predict=False` so its predictor is never evaluated.
  """
  encoder: ResNet
  projector: MLPHead
  predictor: Optional[MLPHead]
  num_classes: int

  @nn.compact
  def __call__(self, x, train: bool, predict: bool = True):
    emb = self.encoder(x, train=train)
    proj = self.projector(emb, train=train)
    out = {'embedding': emb, 'projection': proj}
    if predict and self.predictor is not None:
      out['prediction'] = self.predictor(proj, train=train)
    # Online probe (official BYOL "online accuracy"): no gradient reaches the
    # encoder from the classification loss. None without labels (0 classes).
    if self.num_classes:
      out['logits'] = nn.Dense(self.num_classes, name='probe')(
          jax.lax.stop_gradient(emb))
    # Losses and diagnostics in float32 whatever the compute dtype (bf16
    # mixed precision keeps params, optimizer state, the EMA target and BN
    # statistics in float32 too: flax's param_dtype and BN reductions).
    return {k: v.astype(jnp.float32) for k, v in out.items()}


def build_encoder(model_config, bn_axis_name: Optional[str] = None,
                  compute_dtype: Optional[str] = None,
                  conv_plan: tuple = ()) -> ResNet:
  """The ResNet described by `config.model`, computing in `compute_dtype`
  (default: the config's), its convolutions per `conv_plan` where
  conv_impl='auto'. Saved configs of older runs may lack the newer fields:
  their defaults apply (conv_impl 'xla' for those that predate it)."""
  compute_dtype = compute_dtype or model_config.get('compute_dtype', 'float32')
  return ResNet(depth=model_config.depth, width=model_config.width,
                stem=model_config.stem, bn_axis_name=bn_axis_name,
                dtype=jnp.dtype(compute_dtype),
                conv_impl=model_config.get('conv_impl', 'xla'),
                conv_plan=tuple(conv_plan),
                official_shortcuts=model_config.get('official_shortcuts',
                                                    False))


def build_network(model_config, num_classes: int,
                  bn_axis_name: Optional[str] = None,
                  conv_plan: tuple = ()) -> SSLNetwork:
  """Builds the network described by `config.model` (`conv_plan`: see
  `ResNet`)."""
  dtype = jnp.dtype(model_config.get('compute_dtype', 'float32'))
  encoder = build_encoder(model_config, bn_axis_name, conv_plan=conv_plan)
  proj_kw, pred_kw = HEAD_PRESETS[model_config.head]
  projector = MLPHead(hidden=tuple(model_config.projector_hidden),
                      out=model_config.projection_dim,
                      bn_axis_name=bn_axis_name, dtype=dtype, **proj_kw)
  predictor = None
  if model_config.use_predictor:
    predictor = MLPHead(hidden=tuple(model_config.predictor_hidden),
                        out=model_config.projection_dim,
                        bn_axis_name=bn_axis_name, dtype=dtype, **pred_kw)
  return SSLNetwork(encoder=encoder, projector=projector, predictor=predictor,
                    num_classes=num_classes)


class VariablesMismatchError(ValueError):
  """Variables that are not exactly a module's (names, shapes, finiteness)."""


def _arrays(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _arrays(v, prefix + (k,))
    else:
      yield '/'.join(prefix + (k,)), v


def check_variables(module: nn.Module, variables, input_shape) -> None:
  """Raises VariablesMismatchError unless `variables` ({'params',
  'batch_stats'}) have exactly the leaves and shapes `module` initialises
  for inputs of `input_shape` (flax would silently ignore extra leaves) and
  every value is finite; the message names the offending leaves."""
  want = jax.eval_shape(lambda: module.init(
      jax.random.key(0), jnp.zeros(input_shape), train=False))
  want = {k: tuple(v.shape) for k, v in _arrays(
      {c: want[c] for c in want if c in ('params', 'batch_stats')})}
  have = dict(_arrays(variables))
  shapes = {k: tuple(np.shape(v)) for k, v in have.items()}
  problems = []
  for what, names in (
      ('not used by the network', sorted(set(have) - set(want))),
      ('needed by the network but missing', sorted(set(want) - set(have)))):
    if names:
      problems.append(f'{len(names)} leaves {what}: {", ".join(names[:4])}'
                      + (' ...' if len(names) > 4 else ''))
  wrong = sorted(k for k in set(want) & set(have) if want[k] != shapes[k])
  if wrong:
    problems.append('shapes differ: ' + ', '.join(
        f'{k} {shapes[k]} vs {want[k]}' for k in wrong[:4]))
  if not problems:
    bad = [k for k, v in have.items()
           if not np.all(np.isfinite(np.asarray(v, np.float64)))]
    if bad:
      problems.append(f'non-finite (NaN / inf) values in {len(bad)} leaves: '
                      f'{", ".join(bad[:4])}')
  if problems:
    raise VariablesMismatchError('; '.join(problems) + '.')
