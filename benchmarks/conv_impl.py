r"""One convolution's forward + backward: XLA's, matmul_conv, winograd_conv.

  PYTHONPATH=. .venv/bin/python benchmarks/conv_impl.py
  PYTHONPATH=. .venv/bin/python benchmarks/conv_impl.py --shapes=r18_32

Times jit(grad(sum(conv(x, w)**2))) w.r.t. input and kernel for the layer
shapes of our benchmark networks, with `lax.conv_general_dilated` (what
`model.conv_impl='xla'` runs), with `networks.matmul_conv` (the kernel's
kh*kw shifted slices of the input concatenated and multiplied by the
reshaped kernel) and, on the 3x3 stride-1 layers, `networks.winograd_conv`
(Winograd F(2x2, 3x3), column 'wg2', and F(4x4, 3x3), 'wg4'), alternating
them in one run, and prints which one model.conv_impl='auto' would pick
from these timings and its speed-up over XLA's. Where torch is importable (the bench venv:
`.venv-bench/bin/python benchmarks/conv_impl.py`), the same layer's
forward + backward in PyTorch (oneDNN, NCHW, the same padding) too, and the
picked implementation's speed against it. XLA_FLAGS in the environment
apply to the JAX columns (e.g. XLA's CPU library fusions,
`--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from byol_jax import conv_autotune

# (batch, side, in channels, out channels, kernel, stride) per network.
SHAPES = {
    # The demo: ResNet-18 width 1/8, small_pool stem, 28x28x1, batch 64
    # (x2 views: the step runs each view through the encoder separately).
    'demo': [(64, 28, 1, 8, 3, 1), (64, 14, 8, 8, 3, 1),
             (64, 14, 8, 16, 3, 2), (64, 7, 16, 16, 3, 1),
             (64, 4, 32, 32, 3, 1), (64, 2, 64, 64, 3, 1)],
    # benchmarks/train_step.py's r18_32: width 1, small stem, batch 256.
    'r18_32': [(256, 32, 3, 64, 3, 1), (256, 32, 64, 64, 3, 1),
               (256, 32, 64, 128, 3, 2), (256, 16, 128, 128, 3, 1),
               (256, 8, 256, 256, 3, 1), (256, 4, 512, 512, 3, 1)],
    # r50_224: ResNet-50, ImageNet stem, batch 32.
    'r50_224': [(32, 224, 3, 64, 7, 2), (32, 56, 64, 64, 1, 1),
                (32, 56, 64, 64, 3, 1), (32, 56, 64, 256, 1, 1),
                (32, 14, 256, 256, 3, 1), (32, 7, 2048, 512, 1, 1)],
}


def _torch():
  """torch with one thread per core, or None where it is not installed."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count())
  return torch


def _median_seconds(fn, repeats: int) -> float:
  """Median seconds of `repeats` calls of fn, after a warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def torch_seconds_per_call(n, side, cin, cout, k, s, repeats):
  """Median seconds of one PyTorch conv2d forward + backward (w.r.t. input
  and kernel) of sum(y**2), after a warm-up call; None without torch."""
  torch = _torch()
  if torch is None:
    return None
  x = torch.randn(n, cin, side, side, requires_grad=True)
  w = (torch.randn(cout, cin, k, k) * 0.1).requires_grad_()

  def call():
    x.grad = w.grad = None
    y = torch.nn.functional.conv2d(x, w, stride=s, padding=k // 2)
    y.square().sum().backward()
  return _median_seconds(call, repeats)


def matmul_gflops(n: int = 2048, repeats: int = 5) -> tuple:
  """fp32 (n x n) @ (n x n) GFLOP/s: JAX's, and PyTorch's (None without
  torch): whether a gap per layer is the matmul kernel or the convolution."""
  a = jax.random.normal(jax.random.key(0), (n, n))
  mm = jax.jit(jnp.matmul)
  flops = 2 * n**3
  jax_s = _median_seconds(lambda: jax.block_until_ready(mm(a, a)), repeats)
  torch = _torch()
  if torch is None:
    return flops / jax_s / 1e9, None
  t = torch.randn(n, n)
  torch_s = _median_seconds(lambda: t @ t, repeats)
  return flops / jax_s / 1e9, flops / torch_s / 1e9


def main():
  print(f'Measured on {conv_autotune.machine()}.')
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--shapes', default='demo,r18_32,r50_224',
                 help=f'comma-separated, from {sorted(SHAPES)}')
  p.add_argument('--repeats', type=int, default=3)
  args = p.parse_args()
  jax_peak, torch_peak = matmul_gflops()
  print(f'2048x2048 fp32 matmul: JAX {jax_peak:.0f} GFLOP/s'
        + ('' if torch_peak is None else f', PyTorch {torch_peak:.0f}'))
  versus_torch = (f' {"torch ms":>9s} {"auto / torch":>13s}'
                  if _torch() is not None else '')
  print(f'{"net":8s} {"layer (batch side cin->cout kxk/s)":36s} '
        f'{"xla ms":>9s} {"matmul ms":>10s} {"wg2 ms":>9s} {"wg4 ms":>9s} '
        f'{"auto":>9s} {"xla / auto":>11s}' + versus_torch)
  for net in args.shapes.split(','):
    for n, side, cin, cout, k, s in SHAPES[net]:
      # The timings model.conv_impl='auto' makes (median of `repeats`),
      # alternating the implementations, and the choice it makes from them.
      shape = ((n, side, side, cin), (k, k, cin, cout), (s, s), 'SAME',
               jnp.float32)
      times = {impl: conv_autotune.seconds_per_call(
          conv_autotune.CONVS[impl], *shape, repeats=args.repeats,
          budget_s=float('inf')) for impl in conv_autotune.candidates(shape)}
      auto = conv_autotune.choose(times)
      pt = torch_seconds_per_call(n, side, cin, cout, k, s, args.repeats)
      layer = conv_autotune.describe(shape)
      versus = ('' if pt is None else
                f' {1e3 * pt:9.2f} {pt / times[auto]:12.2f}x')
      wino = ' '.join(f'{1e3 * times[i]:9.2f}' if i in times
                      else f'{"-":>9s}' for i in ('winograd', 'winograd4'))
      print(f'{net:8s} {layer:36s} {1e3 * times["xla"]:9.2f} '
            f'{1e3 * times["matmul"]:10.2f} {wino} {auto:>9s} '
            f'{times["xla"] / times[auto]:10.2f}x{versus}', flush=True)


if __name__ == '__main__':
  main()
