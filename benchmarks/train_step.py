r"""BYOL / SimSiam train-step throughput: byol_jax vs. a PyTorch reference of
the same step (benchmarks/torch_reference.py), side by side in one run.

  make bench-step                 # every case, both methods
  .venv-bench/bin/python benchmarks/train_step.py --cases=r18_32 --steps=3
  .venv-bench/bin/python benchmarks/train_step.py --conv_impls=auto,xla,matmul
  .venv-bench/bin/python benchmarks/train_step.py --cases=demo --pools=planes,xla
  .venv-bench/bin/python benchmarks/train_step.py --host_memory=keep,system

`--conv_impls` times our step once per `model.conv_impl` ('auto', the
default: per layer shape the fastest of those below, as timed on this
machine; 'xla': XLA's convolutions; 'matmul': networks.matmul_conv;
'winograd' / 'winograd4': networks.winograd_conv, F(2x2, 3x3) / F(4x4,
3x3), on the 3x3 stride-1 layers), each against the same PyTorch run.

Cases: the demo's network (ResNet-18 width 1/8, small_pool stem, 28x28x1,
batch 64); ResNet-18 with the small-image stem at 32x32, batch 256;
ResNet-50 at 224x224, batch 32. Each (framework, case, method) runs in its
own child process on synthetic images (no input pipeline), all cores, and
reports images/s over `--steps` timed steps after one warm-up step, the
first step's time (JAX: trace + compile), peak resident memory (ru_maxrss),
and for JAX the step's FLOPs (XLA cost analysis) as a fraction of the
machine's float32 matmul peak measured in the same child.

A shared 2-core machine drifts by +-25% within minutes (the same PyTorch
child measured 968, 1219 and 1486 img/s in one session), so one pair of
children does not give a ratio. `--repeats` rounds run per (case, method),
each round a PyTorch child followed at once by the JAX children; a line's
ratio is the median over rounds of the ratio within a round (the two
children back to back), printed with the rounds' lowest and highest ratio,
and its images/s are the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
CASES = {
    # name: (depth, stem, image size, batch, width, channels)
    'r18_32': (18, 'small', 32, 256, 1.0, 3),
    'r50_224': (50, 'imagenet', 224, 32, 1.0, 3),
    # The demo's network (configs/byol_fashion_mnist.py) at its batch.
    'demo': (18, 'small_pool', 28, 64, 0.125, 1),
}
# Timed steps: enough to be seconds long, not minutes (an R50 step on 2
# CPU cores takes ~30-60 s).
STEPS = {'demo': 20, 'r18_32': 3, 'r50_224': 2}
# Rounds per (case, method): each child recompiles (10-70 s), so the big
# cases get fewer.
REPEATS = {'demo': 5, 'r18_32': 3, 'r50_224': 2}
HEADS = {  # (projector hidden, predictor hidden, output), our configs.
    ('byol', 'r18_32'): ((4096,), (4096,), 256),
    ('byol', 'r50_224'): ((4096,), (4096,), 256),
    ('simsiam', 'r18_32'): ((2048,), (512,), 2048),
    ('simsiam', 'r50_224'): ((2048, 2048), (512,), 2048),
    ('byol', 'demo'): ((512,), (512,), 128),
    ('simsiam', 'demo'): ((512,), (128,), 512),  # simsiam_fashion_mnist.py
}


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_jax(case: str, method: str, steps: int,
            conv_impl: str = 'auto', diagnostics: str = 'on',
            pool: str = 'planes', host_memory: str = 'keep') -> dict:
  # As the commands do (byol_jax.cli.setup), before JAX's backend starts.
  os.environ['BYOL_JAX_HOST_MEMORY'] = host_memory
  from byol_jax import host_memory as host_memory_lib  # pylint: disable=g-import-not-at-top
  host_memory_lib.configure()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from byol_jax import config_lib, conv_autotune, networks, optim, parallel, train_step  # pylint: disable=g-import-not-at-top
  if diagnostics == 'off':  # The step without the collapse metrics.
    train_step.diagnostics.collapse_metrics = lambda z, rank_due=True: {}
  if pool == 'xla':  # The stems' max-pool with JAX's own gradient.
    networks.max_pool = lambda x, window, strides: networks.nn.max_pool(
        x, window, strides, padding='SAME')

  depth, stem, size, batch, width, channels = CASES[case]
  proj, pred, out = HEADS[(method, case)]
  c = config_lib.base_config()
  if method == 'simsiam':
    c = config_lib.simsiam_overrides(c)
  c.model.update(dict(depth=depth, width=width, stem=stem,
                      projector_hidden=proj, predictor_hidden=pred,
                      projection_dim=out, conv_impl=conv_impl))
  # 'auto' times the convolutions as a run does (cached per machine); the
  # first step below counts from here, as a run's start would.
  t_start = time.perf_counter()
  conv_plan = conv_autotune.plan(c.model, (size, size, channels), batch)
  plan_s = time.perf_counter() - t_start
  network = networks.build_network(c.model, 10, bn_axis_name=parallel.AXIS,
                                   conv_plan=conv_plan)
  lr = optim.learning_rate_schedule(0.2, 1000, 0)
  optimizer = optim.with_probe_optimizer(
      optim.build_optimizer(c.optimizer, lr, 0.2), c.probe)
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  state = parallel.replicate(train_step.init_state(
      jax.random.key(0), network, optimizer, (size, size, channels),
      use_target=c.target.use), mesh)
  step = train_step.make_train_step(
      mesh, network=network, optimizer=optimizer, lr_schedule=lr,
      tau_schedule=optim.tau_schedule(0.99, 1000), loss_config=c.loss,
      # As the trainer: the effective rank on logging steps only.
      rank_every=1 if diagnostics == 'every' else c.log_every_steps)
  rng = np.random.RandomState(0)
  batch_ = parallel.shard_batch({
      'view1': rng.randn(batch, size, size, channels).astype(np.float32),
      'view2': rng.randn(batch, size, size, channels).astype(np.float32),
      'label': rng.randint(0, 10, batch).astype(np.int32)}, mesh)
  key = parallel.replicate(jax.random.key(1), mesh)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch_, key).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  t0 = time.perf_counter()
  state, metrics = compiled(state, batch_, key)
  jax.block_until_ready(metrics)
  first_s = compile_s + time.perf_counter() - t0
  impls = [impl for _, impl in conv_plan]
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch_, key)
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t0) / steps

  a = jnp.ones((2048, 2048), jnp.float32)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(a))
  t0 = time.perf_counter()
  for _ in range(10):
    r = mm(a)
  jax.block_until_ready(r)
  peak = 10 * 2 * 2048**3 / (time.perf_counter() - t0)
  return {'images_per_s': batch / dt, 'step_s': dt, 'first_step_s': first_s,
          'conv_plan_s': plan_s,
          'matmul_conv_shapes': impls.count('matmul'),
          'winograd_conv_shapes': impls.count('winograd'),
          'winograd4_conv_shapes': impls.count('winograd4'),
          'peak_rss_mb': _peak_rss_mb(), 'gflop_per_step': flops / 1e9,
          'achieved_gflops': flops / dt / 1e9,
          'matmul_peak_gflops': peak / 1e9,
          'loss': float(metrics['loss'])}


def run_torch(case: str, method: str, steps: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_reference  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  depth, stem, size, batch, width, channels = CASES[case]
  proj, pred, out = HEADS[(method, case)]
  step = torch_reference.Step(method, depth, stem, proj, pred, out,
                              width=width, in_channels=channels)
  g = torch.Generator().manual_seed(0)
  v1 = torch.randn(batch, channels, size, size, generator=g)
  v2 = torch.randn(batch, channels, size, size, generator=g)
  labels = torch.randint(0, 10, (batch,), generator=g)
  t0 = time.perf_counter()
  loss = step(v1, v2, labels)
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    loss = step(v1, v2, labels)
  dt = (time.perf_counter() - t0) / steps
  return {'images_per_s': batch / dt, 'step_s': dt, 'first_step_s': first_s,
          'peak_rss_mb': _peak_rss_mb(), 'loss': float(loss)}


def _child(framework, case, method, steps, python, conv_impl='auto',
           diagnostics='on', pool='planes', host_memory='keep') -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env.pop('XLA_FLAGS', None)
  r = subprocess.run(
      [python, os.path.abspath(__file__), f'--child={framework}',
       f'--cases={case}', f'--methods={method}', f'--steps={steps}',
       f'--conv_impls={conv_impl}', f'--diagnostics={diagnostics}',
       f'--pools={pool}', f'--host_memory={host_memory}'],
      cwd=ROOT, env=env, capture_output=True, text=True)
  if r.returncode:
    raise RuntimeError(f'{framework} {case} {method} failed:\n'
                       f'{r.stderr[-3000:]}')
  return json.loads(r.stdout.strip().splitlines()[-1])


def summarize(rounds: list[tuple[dict, dict]]) -> dict:
  """One line from `rounds` of (PyTorch result, JAX result) pairs, each
  pair measured back to back: the median of the per-round ratios, their
  range, and per framework the median of each measurement (the 'auto'
  timing: the first round's)."""
  ratios = sorted(j['images_per_s'] / t['images_per_s'] for t, j in rounds)
  med = lambda xs: float(np.median(xs))  # pylint: disable=unnecessary-lambda-assignment
  return {
      'ratio': med(ratios), 'ratio_min': ratios[0], 'ratio_max': ratios[-1],
      'rounds': len(rounds),
      'torch': {k: med([t[k] for t, _ in rounds]) for k in rounds[0][0]},
      'jax': {k: med([j[k] for _, j in rounds]) for k in rounds[0][1]},
      # The first round is the one that times the convolutions when the
      # machine's cache is empty; later rounds read the cache.
      'conv_plan_s_first': rounds[0][1]['conv_plan_s'],
      'per_round': [{'torch': t['images_per_s'], 'jax': j['images_per_s']}
                    for t, j in rounds]}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--cases', default='demo,r18_32,r50_224')
  p.add_argument('--methods', default='byol,simsiam')
  p.add_argument('--steps', type=int, default=None,
                 help='timed steps per line; default per case: '
                 f'{STEPS}')
  p.add_argument('--repeats', type=int, default=None,
                 help='rounds per (case, method), each a PyTorch child '
                 'then the JAX children; default per case: '
                 f'{REPEATS}')
  p.add_argument('--conv_impls', default='auto',
                 help="model.conv_impl values to time, comma-separated: "
                 "'auto' (the default config), 'xla', 'matmul', "
                 "'winograd', 'winograd4'.")
  p.add_argument('--diagnostics', default='on',
                 help="comma-separated: 'on' (the trainer's step: the "
                 "effective rank every log_every_steps, 100, so never in "
                 "the timed steps), 'every' (the rank's SVD every step, "
                 "as before 2026-12-02), 'off' (no collapse metrics, as "
                 "the PyTorch reference).")
  p.add_argument('--pools', default='planes',
                 help="comma-separated: 'planes' (networks.max_pool, the "
                 "default: on CPU its gradient as stride-parity planes), "
                 "'xla' (nn.max_pool: JAX's own gradient, a variadic "
                 "reduce-window over int32 iotas on CPU).")
  p.add_argument('--host_memory', default='keep',
                 help="comma-separated: 'keep' (byol_jax.host_memory, as "
                 "the commands run: freed buffers stay in the process for "
                 "the next step), 'system' (malloc and JAX's dispatch as "
                 "they come: a temporary buffer over 32 MiB is mapped and "
                 "page-faulted in again every step).")
  p.add_argument('--child', choices=['jax', 'torch'])
  args = p.parse_args()
  if args.child == 'jax':
    print(json.dumps(run_jax(args.cases, args.methods, args.steps,
                             args.conv_impls, args.diagnostics, args.pools,
                             args.host_memory)))
    return
  if args.child == 'torch':
    print(json.dumps(run_torch(args.cases, args.methods, args.steps)))
    return
  from byol_jax import conv_autotune  # pylint: disable=g-import-not-at-top
  print(f'{conv_autotune.machine()}; {args.steps or STEPS} timed steps after '
        f'one warm-up, {args.repeats or REPEATS} rounds (a PyTorch child, '
        'then the JAX children), synthetic images, one child process per '
        'measurement.\n')
  header = (f'{"case":9s} {"method":8s} {"conv":20s} {"JAX img/s":>10s} '
            f'{"torch img/s":>12s} {"ratio":>6s} {"(range)":>11s} '
            f'{"JAX 1st s":>10s} '
            f'{"torch 1st s":>12s} {"plan s":>7s} {"mm/w2/w4":>9s} '
            f'{"JAX MB":>8s} {"torch MB":>9s} '
            f'{"GFLOP/step":>11s} {"% matmul peak":>14s}')
  print(header)
  rows = []
  for case in args.cases.split(','):
    steps = args.steps or STEPS[case]
    repeats = args.repeats or REPEATS[case]
    for method in args.methods.split(','):
      variants = [(c, d, pl, hm) for c in args.conv_impls.split(',')
                  for d in args.diagnostics.split(',')
                  for pl in args.pools.split(',')
                  for hm in args.host_memory.split(',')]
      rounds = {v: [] for v in variants}
      for _ in range(repeats):
        t = _child('torch', case, method, steps, sys.executable)
        for v in variants:
          rounds[v].append((t, _child('jax', case, method, steps,
                                      sys.executable, *v)))
      for conv_impl, diag, pool, host in variants:
        line = summarize(rounds[(conv_impl, diag, pool, host)])
        j, t = line['jax'], line['torch']
        rows.append({'case': case, 'method': method, 'conv_impl': conv_impl,
                     'diagnostics': diag, 'pool': pool, 'host_memory': host,
                     **line})
        label = conv_impl + {'on': '', 'every': '-rank1',
                             'off': '-nodiag'}[diag] + {
                                 'planes': '', 'xla': '-xlapool'}[pool] + {
                                     'keep': '', 'system': '-sysmem'}[host]
        span = f'({line["ratio_min"]:.2f}-{line["ratio_max"]:.2f})'
        print(f'{case:9s} {method:8s} {label:20s} '
              f'{j["images_per_s"]:10.1f} '
              f'{t["images_per_s"]:12.1f} {line["ratio"]:6.2f} {span:>11s} '
              f'{j["first_step_s"]:10.1f} {t["first_step_s"]:12.1f} '
              f'{line["conv_plan_s_first"]:7.1f} '
              f'{j["matmul_conv_shapes"]:3.0f}/'
              f'{j["winograd_conv_shapes"]:.0f}/'
              f'{j["winograd4_conv_shapes"]:<3.0f} '
              f'{j["peak_rss_mb"]:8.0f} {t["peak_rss_mb"]:9.0f} '
              f'{j["gflop_per_step"]:11.1f} '
              f'{100 * j["achieved_gflops"] / j["matmul_peak_gflops"]:13.0f}%',
              flush=True)
  print('\nratio = median over rounds of JAX images/s / PyTorch images/s '
        'within a round (> 1: JAX faster), (range) the lowest and highest '
        'round; images/s, first steps and memory are medians over rounds. '
        "JAX 1st s: trace + compile + run of the first step; plan s: "
        "model.conv_impl='auto' timing the convolutions (~0 once cached); "
        'mm/w2/w4: convolution shapes it gave to matmul_conv / '
        'winograd_conv F(2x2, 3x3) / F(4x4, 3x3).')
  print(json.dumps(rows))


if __name__ == '__main__':
  main()
