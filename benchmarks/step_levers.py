r"""Which levers speed up the BYOL train step on this CPU: each one toggled
against the same baseline, side by side in one run.

  PYTHONPATH=. .venv/bin/python benchmarks/step_levers.py
  PYTHONPATH=. .venv/bin/python benchmarks/step_levers.py --width=0.125 --batch=64

Network: ResNet-18 (small-image stem, 32x32x3, width 1/4 = 16-32-64-128
channels by default: the "width 16" network of the CPU speed facts in
docs/performance.md), BYOL heads 4096 -> 256, LARS, EMA target, one device.
The baseline is `train_step.make_train_step` as the trainer runs it (one jit
holding both views' online and target forwards, loss, LARS and EMA; state
donated; no host sync between steps; XLA convolutions). Each lever line
changes one thing:
  no donation        jit without donate_argnums (the state is copied)
  host sync per step float(loss) after every step, as a naive loop would
  conv_impl=matmul   networks.matmul_conv for every convolution
  one encoder call   proxy: the encoder's forward+backward on both views
                     concatenated (2B) vs. two calls of B, timed alone. With
                     per-view BatchNorm statistics this is the most a fused
                     call could save; it does not need the BN change to
                     tell whether the lever can pay.
Rates are images/s of the step (each image = two views), over `--steps`
timed steps after compilation; the speed-up column is vs. the baseline
line timed in the same run (the baseline is timed first and last; both
printed, so the drift of a shared machine is visible).
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from byol_jax import config_lib, networks, optim, parallel, train_step


def _setup(args, conv_impl='xla'):
  c = config_lib.base_config()
  c.model.update(dict(depth=18, width=args.width, stem='small',
                      conv_impl=conv_impl))
  net = networks.build_network(c.model, 10, bn_axis_name=parallel.AXIS)
  lr = optim.learning_rate_schedule(0.2, 1000, 0)
  opt = optim.with_probe_optimizer(
      optim.build_optimizer(c.optimizer, lr, 0.2), c.probe)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = train_step.init_state(jax.random.key(0), net, opt,
                                (args.size, args.size, 3), use_target=True)
  kwargs = dict(network=net, optimizer=opt, lr_schedule=lr,
                tau_schedule=optim.tau_schedule(0.99, 1000),
                loss_config=c.loss)
  x = np.random.RandomState(0).randn(args.batch, args.size, args.size,
                                     3).astype(np.float32)
  batch = parallel.shard_batch(
      {'view1': x, 'view2': x[::-1].copy(),
       'label': np.zeros(args.batch, np.int32)}, mesh)
  rng = parallel.replicate(jax.random.key(1), mesh)
  return mesh, state, kwargs, batch, rng


def _time_step(step, state, batch, rng, steps, sync=False):
  state, metrics = step(state, batch, rng)  # Compile.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch, rng)
    if sync:
      float(metrics['loss'])
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / steps


def step_rate(args, lever=None):
  mesh, state, kwargs, batch, rng = _setup(
      args, 'matmul' if lever == 'conv_impl=matmul' else 'xla')
  state = parallel.replicate(state, mesh)
  if lever == 'no donation':
    step = jax.jit(jax.shard_map(
        functools.partial(train_step.train_step, axis_name=parallel.AXIS,
                          **kwargs),
        mesh=mesh, in_specs=(P(), P(parallel.AXIS), P()),
        out_specs=(P(), P())))
  else:
    step = train_step.make_train_step(mesh, **kwargs)
  dt = _time_step(step, state, batch, rng, args.steps,
                  sync=lever == 'host sync per step')
  return args.batch / dt


def encoder_rates(args):
  """(two calls of B, one call of 2B): images/s of the encoder's fwd+bwd."""
  encoder = networks.ResNet(depth=18, width=args.width, stem='small')
  x = jax.random.normal(jax.random.key(0),
                        (2, args.batch, args.size, args.size, 3))
  variables = jax.jit(functools.partial(encoder.init, train=False))(
      jax.random.key(1), x[0])

  def loss(params, images):
    out, _ = encoder.apply({**variables, 'params': params}, images,
                           train=True, mutable=['batch_stats'])
    return jnp.sum(out ** 2)

  two = jax.jit(jax.grad(lambda p, x: loss(p, x[0]) + loss(p, x[1])))
  one = jax.jit(jax.grad(lambda p, x: loss(p, x.reshape(-1, *x.shape[2:]))))
  rates = []
  for fn in (two, one):
    jax.block_until_ready(fn(variables['params'], x))
    start = time.perf_counter()
    for _ in range(args.steps):
      g = fn(variables['params'], x)
    jax.block_until_ready(g)
    rates.append(args.batch * args.steps / (time.perf_counter() - start))
  return rates


def main():
  from byol_jax import conv_autotune  # pylint: disable=g-import-not-at-top
  print(f'Measured on {conv_autotune.machine()}.')
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--width', type=float, default=0.25)
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--size', type=int, default=32)
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--only_encoder', action='store_true',
                 help='only the one-call vs. two-calls encoder proxy')
  args = p.parse_args()
  print(f'ResNet-18 width {args.width}, small stem, {args.size}x{args.size}, '
        f'batch {args.batch}, {args.steps} timed steps, '
        f'{jax.devices()[0].platform}\n')
  print(f'{"lever":24s} {"img/s":>8s} {"vs baseline":>12s}')
  if args.only_encoder:
    _print_encoder(args)
    return
  base = step_rate(args)
  print(f'{"baseline":24s} {base:8.1f} {1.0:11.2f}x', flush=True)
  for lever in ('no donation', 'host sync per step', 'conv_impl=matmul'):
    rate = step_rate(args, lever)
    print(f'{lever:24s} {rate:8.1f} {rate / base:11.2f}x', flush=True)
  again = step_rate(args)
  print(f'{"baseline (again)":24s} {again:8.1f} {again / base:11.2f}x',
        flush=True)
  _print_encoder(args)


def _print_encoder(args):
  two, one = encoder_rates(args)
  print(f'\nencoder fwd+bwd only:\n{"two calls of B":24s} {two:8.1f} '
        f'{1.0:11.2f}x\n{"one call of 2B":24s} {one:8.1f} {one / two:11.2f}x')


if __name__ == '__main__':
  main()
