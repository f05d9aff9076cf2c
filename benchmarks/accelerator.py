r"""One-shot benchmark of a GPU / TPU host: writes a markdown table.

  bash benchmarks/accelerator.sh                 # the real thing (< 8 min)
  bash benchmarks/accelerator.sh --tiny          # CPU smoke mode (CI)

Rows, on every local device of JAX's default backend:
- BYOL train step (ResNet-50, 224 px, BYOL heads 4096 -> 256, LARS, EMA)
  in float32 and bfloat16 compute: images/s at the largest per-device batch
  of a ladder that fits (an out-of-memory error tries the next smaller),
  the step's FLOPs (XLA cost analysis) and MFU: achieved FLOP/s over the
  devices' peak (the datasheet's dense peak where the device kind is known,
  else the matmul peak measured here, which is also shown);
- on-device augmentation (`device_augment`, both views of ImageNet's recipe
  at 224 px) images/s;
- the tf.data input rate at 224 px on this host's cores (the full two-view
  recipe from 256x256 uint8 sources);
- checks: the step on all local devices equals the same global batch on
  one device, and the bfloat16 step's loss is finite and near float32's.
`--tiny` shrinks everything (ResNet-18 width 1/16 at 32 px, batch 8 per
device, 2 s rates) so it runs on CPU in the test suite and cannot rot.
Sections stop when `--budget_s` is spent; what did not run says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from byol_jax import (augment, config_lib, conv_autotune, networks, optim,  # noqa: E402
                      parallel, train_step)

# Dense peak FLOP/s per device (vendor datasheets), by jax device_kind
# prefix: (float32, bfloat16). GPUs' float32 is the non-tensor-core peak.
PEAKS = {
    'NVIDIA H100': (67e12, 989e12), 'NVIDIA H200': (67e12, 989e12),
    'NVIDIA A100': (19.5e12, 312e12), 'TPU v4': (None, 275e12),
    'TPU v5 lite': (None, 197e12), 'TPU v5e': (None, 197e12),
    'TPU v5p': (None, 459e12), 'TPU v6 lite': (None, 918e12),
}
FULL = dict(depth=50, width=1.0, stem='imagenet', size=224,
            heads=((4096,), (4096,), 256), batches=(256, 128, 64, 32, 16),
            steps=10, seconds=10.0, channels=3)
TINY = dict(depth=18, width=1 / 16, stem='small', size=32,
            heads=((16,), (16,), 8), batches=(8,), steps=2, seconds=2.0,
            channels=3)


def _model(p, dtype):
  c = config_lib.base_config()
  proj, pred, out = p['heads']
  c.model.update(dict(depth=p['depth'], width=p['width'], stem=p['stem'],
                      projector_hidden=proj, predictor_hidden=pred,
                      projection_dim=out, compute_dtype=dtype,
                      # What 'auto' gives on GPU/TPU; on CPU (--tiny) it
                      # spares the per-layer timing, tested elsewhere.
                      conv_impl='xla'))
  return c


_COMPILED, _INITIAL = {}, {}


def _step(p, dtype, devices, per_device_batch, seed=0):
  """(compiled step, state, batch, key, flops) for `devices`; the compiled
  step is kept for the next call with the same arguments (a fresh state
  each time: the step donates it)."""
  c = _model(p, dtype)
  size, ch = p['size'], p['channels']
  network = networks.build_network(c.model, 10, bn_axis_name=parallel.AXIS)
  lr = optim.learning_rate_schedule(0.2, 1000, 0)
  optimizer = optim.with_probe_optimizer(
      optim.build_optimizer(c.optimizer, lr, 0.2), c.probe)
  mesh = parallel.make_mesh(devices)
  if (dtype, seed) not in _INITIAL:  # On the host: the same for any mesh.
    _INITIAL[dtype, seed] = jax.device_get(train_step.init_state(
        jax.random.key(seed), network, optimizer, (size, size, ch),
        use_target=True))
  state = parallel.replicate(_INITIAL[dtype, seed], mesh)
  n = per_device_batch * len(devices)
  rng = np.random.RandomState(seed)
  batch = parallel.shard_batch({
      'view1': rng.randn(n, size, size, ch).astype(np.float32),
      'view2': rng.randn(n, size, size, ch).astype(np.float32),
      'label': rng.randint(0, 10, n).astype(np.int32)}, mesh)
  key = parallel.replicate(jax.random.key(1), mesh)
  cache_key = (dtype, len(devices), per_device_batch)
  if cache_key not in _COMPILED:
    step = train_step.make_train_step(
        mesh, network=network, optimizer=optimizer, lr_schedule=lr,
        tau_schedule=optim.tau_schedule(0.99, 1000), loss_config=c.loss)
    compiled = step.lower(state, batch, key).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
    _COMPILED[cache_key] = compiled, flops
  compiled, flops = _COMPILED[cache_key]
  return compiled, state, batch, key, flops


def _oom(e: Exception) -> bool:
  text = str(e)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def matmul_peak(dtype, n: int) -> float:
  """FLOP/s of one device's n x n matmul in `dtype` (best of 5)."""
  a = jnp.ones((n, n), dtype)
  mm = jax.jit(lambda a: a @ a)
  jax.block_until_ready(mm(a))
  best = float('inf')
  for _ in range(5):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def peak(kind: str, dtype: str):
  for prefix, (f32, bf16) in PEAKS.items():
    if kind.startswith(prefix):
      return f32 if dtype == 'float32' else bf16
  return None


def bench_step(p, dtype, devices, measured_peak):
  """The row of the largest ladder batch that fits."""
  for b in p['batches']:
    try:
      compiled, state, batch, key, flops = _step(p, dtype, devices, b)
      state, metrics = compiled(state, batch, key)
      jax.block_until_ready(metrics)
      t0 = time.perf_counter()
      for _ in range(p['steps']):
        state, metrics = compiled(state, batch, key)
      jax.block_until_ready(metrics)
      dt = (time.perf_counter() - t0) / p['steps']
    except Exception as e:  # pylint: disable=broad-except
      if _oom(e) and b != p['batches'][-1]:
        continue
      raise
    n = b * len(devices)
    # cost_analysis counts one device's program (the mapped step).
    achieved = flops / dt
    datasheet = peak(devices[0].device_kind, dtype)
    denom = datasheet or measured_peak
    return {'batch': f'{b} x {len(devices)}', 'images_per_s': n / dt,
            'gflop': flops / 1e9, 'tflops': achieved / 1e12,
            'mfu': achieved / denom,
            'mfu_of': 'datasheet' if datasheet else 'measured matmul',
            'loss': float(metrics['loss'])}
  raise RuntimeError('no batch fits')


def device_checks(p):
  """Rows (name, passed, detail)."""
  rows = []
  devices = jax.local_devices()
  b = p['batches'][-1]
  if len(devices) > 1:
    many, s1, bt1, k1, _ = _step(p, 'float32', devices, b)
    one, s2, bt2, k2, _ = _step(p, 'float32', devices[:1], b * len(devices))
    new_many, m_many = many(s1, bt1, k1)
    new_one, m_one = one(s2, bt2, k2)
    diff = abs(float(m_many['loss']) - float(m_one['loss']))
    # The updated online parameters: pmean'd gradients and cross-replica
    # BatchNorm make the sharded step the same function as the one-device
    # step (up to summation order).
    pdiff = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree.leaves(jax.device_get(new_many.online_params)),
        jax.tree.leaves(jax.device_get(new_one.online_params))))
    rows.append((f'step on {len(devices)} devices == on 1 (global batch '
                 f'{b * len(devices)})',
                 diff < 1e-4 * max(1, abs(float(m_one['loss'])))
                 and pdiff < 1e-4,
                 f'loss diff {diff:.1e}, max param diff {pdiff:.1e}'))
  else:
    rows.append(('step on all devices == on 1', None, 'one device: not run'))
  f32, s, bt, k, _ = _step(p, 'float32', devices, b)
  bf16, s16, bt16, k16, _ = _step(p, 'bfloat16', devices, b)
  l32 = float(f32(s, bt, k)[1]['loss'])
  l16 = float(bf16(s16, bt16, k16)[1]['loss'])
  rel = abs(l16 - l32) / max(abs(l32), 1e-6)
  rows.append(('bfloat16 step: finite, loss within 5% of float32',
               bool(np.isfinite(l16)) and rel < 0.05,
               f'loss {l16:.4f} vs {l32:.4f}'))
  return rows


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--tiny', action='store_true')
  ap.add_argument('--out', default='accelerator.md')
  ap.add_argument('--budget_s', type=float, default=450.0)
  args = ap.parse_args()
  p = TINY if args.tiny else FULL
  deadline = time.monotonic() + args.budget_s
  devices = jax.local_devices()
  kind = devices[0].device_kind
  lines = [f'# Accelerator benchmark: {len(devices)} x {kind} '
           f'({jax.default_backend()}), jax {jax.__version__}'
           + (' — tiny mode' if args.tiny else ''), '',
           f'Host: {conv_autotune.machine()}. Command: `bash '
           f'benchmarks/accelerator.sh{" --tiny" if args.tiny else ""}`.', '',
           '| measurement | value | detail |', '|---|---|---|']
  failures = []

  def section(name, fn):
    if time.monotonic() > deadline:
      lines.append(f'| {name} | not run | time budget (--budget_s) spent |')
      return
    t0 = time.monotonic()
    try:
      for row in fn():
        lines.append('| ' + ' | '.join(row) + ' |')
        print(lines[-1], flush=True)
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      failures.append(name)
      lines.append(f'| {name} | failed | {type(e).__name__}: '
                   f'{str(e).splitlines()[0][:120] if str(e) else ""} |')
      print(lines[-1], flush=True)
    print(f'  ({name}: {time.monotonic() - t0:.0f} s)', flush=True)

  size = 512 if args.tiny else 8192
  peaks = {}

  def peaks_rows():
    for dtype in ('float32', 'bfloat16'):
      peaks[dtype] = matmul_peak(jnp.dtype(dtype), size)
      yield (f'{dtype} matmul peak ({size}^2, one device)',
             f'{peaks[dtype] / 1e12:.2f} TFLOP/s',
             f'datasheet: {peak(kind, dtype) / 1e12:.0f} TFLOP/s'
             if peak(kind, dtype) else 'datasheet: unknown device')
  section('matmul peak', peaks_rows)
  net = (f'ResNet-{p["depth"]} width {p["width"]:g}, {p["size"]} px')
  for dtype in ('float32', 'bfloat16'):
    def step_rows(dtype=dtype):
      r = bench_step(p, dtype, devices, peaks.get(dtype, float('nan')))
      yield (f'BYOL step {dtype}, {net}', f'{r["images_per_s"]:.1f} img/s',
             f'batch {r["batch"]}; {r["gflop"]:.3g} GFLOP/step/device, '
             f'{r["tflops"]:.3g} TFLOP/s/device, MFU {100 * r["mfu"]:.1f}% '
             f'(of the {r["mfu_of"]} peak); loss {r["loss"]:.4f}')
    section(f'BYOL step {dtype}', step_rows)

  import device_augment as aug_bench  # pylint: disable=g-import-not-at-top
  views = augment.preset('byol_imagenet')
  aug_size = 32 if args.tiny else 224

  def augment_rows():
    rate = aug_bench.rate_device(aug_size, views, p['seconds'])
    yield (f'on-device augmentation, both views, {aug_size} px',
           f'{rate:.0f} img/s', 'device_augment.augment_batch, batch 64')
  section('on-device augmentation', augment_rows)

  def input_rows():
    src = 40 if args.tiny else 256
    images = np.random.RandomState(0).randint(
        0, 256, (64, src, src, 3)).astype(np.uint8)
    rate = aug_bench.rate_host(images, aug_size, views, p['seconds'],
                               crop_only=False, threads=os.cpu_count())
    yield (f'tf.data input, two views, {aug_size} px, {os.cpu_count()} '
           'host cores', f'{rate:.0f} img/s',
           f'from {src}x{src} uint8, the byol_imagenet recipe')
  section('tf.data input', input_rows)

  def check_rows():
    for name, ok, detail in device_checks(p):
      if ok is False:
        failures.append(name)
      yield (name, {True: 'pass', False: 'FAIL', None: 'n/a'}[ok], detail)
  section('device checks', check_rows)

  text = '\n'.join(lines) + '\n'
  with open(args.out, 'w') as f:
    f.write(text)
  print(f'\nWrote {args.out}')
  if failures:
    print(f'Failed: {", ".join(failures)}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  main()
