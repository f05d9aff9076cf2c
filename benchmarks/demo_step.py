r"""BYOL train-step throughput of the demo network, by stem, width and batch.

  .venv/bin/python benchmarks/demo_step.py                 # the default grid
  .venv/bin/python benchmarks/demo_step.py 128:stem=small 64:stem=small_pool

Each argument is BATCH[:field=value...] over `config.model` of
configs/byol_fashion_mnist.py (28x28x1 inputs, LARS, EMA target, one
device, `model.conv_impl='auto'` with its per-layer plan unless a case
sets conv_impl); the step is timed after compilation on synthetic views,
so the figures exclude the input pipeline. Prints images/s, and each
case's rate relative to the first, measured in one run.
"""

import ast
import importlib.util
import os
import sys
import time

import jax
import numpy as np

from byol_jax import conv_autotune, networks, optim, parallel, train_step

_CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs',
                       'byol_fashion_mnist.py')
DEFAULT = ['128:stem=small', '128:stem=small_pool', '64:stem=small_pool',
           '128:stem=imagenet']


def _config():
  spec = importlib.util.spec_from_file_location('demo_config', _CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def images_per_second(batch: int, overrides: dict, steps: int = 15) -> float:
  c = _config()
  c.model.update(overrides)
  # model.conv_impl='auto' (the default) runs the per-layer choice a
  # training run would make (timed once per machine, then cached).
  plan = conv_autotune.plan(c.model, (28, 28, 1), batch)
  net = networks.build_network(c.model, 10, bn_axis_name=parallel.AXIS,
                               conv_plan=plan)
  lr = optim.learning_rate_schedule(1.0, 1000, 10)
  opt = optim.with_probe_optimizer(
      optim.build_optimizer(c.optimizer, lr, 1.0), c.probe)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = parallel.replicate(train_step.init_state(
      jax.random.key(0), net, opt, (28, 28, 1), use_target=True), mesh)
  step = train_step.make_train_step(
      mesh, network=net, optimizer=opt, lr_schedule=lr,
      tau_schedule=optim.tau_schedule(0.99, 1000), loss_config=c.loss)
  rng = parallel.replicate(jax.random.key(1), mesh)
  x = np.random.RandomState(0).randn(batch, 28, 28, 1).astype(np.float32)
  batch_arrays = parallel.shard_batch(
      {'view1': x, 'view2': x[::-1].copy(),
       'label': np.zeros(batch, np.int32)}, mesh)
  state, metrics = step(state, batch_arrays, rng)  # Compile.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch_arrays, rng)
  jax.block_until_ready(metrics)
  return batch * steps / (time.perf_counter() - start)


def main(args):
  print(f'Measured on {conv_autotune.machine()}.')
  first = None
  print(f'{"case":34s}{"img/s":>8s}{"vs first":>10s}')
  for arg in args or DEFAULT:
    batch, *fields = arg.split(':')
    overrides = {k: (ast.literal_eval(v) if v[:1].isdigit() or v[:1] in '([{'
                     else v) for k, v in (f.split('=', 1) for f in fields)}
    rate = images_per_second(int(batch), overrides)
    first = first or rate
    print(f'{arg:34s}{rate:8.0f}{rate / first:9.2f}x', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
