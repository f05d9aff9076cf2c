r"""How much of a run's start the persistent compilation cache saves on CPU.

  PYTHONPATH=. .venv/bin/python benchmarks/compile_cache.py [--steps=20]

Runs the demo's command (configs/byol_fashion_mnist.py: its network, step
and kNN evaluation) for `--steps` steps three times, each in a fresh
process and workdir, and prints each run's wall time: with an empty cache
(the run fills it; it also times model.conv_impl='auto''s convolutions),
with the compilation cache off (JAX_ENABLE_COMPILATION_CACHE=false; the
convolution timings cached), and with the cache the first run filled:
what a resumed or repeated run of the same config sees.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def timed_run(steps: int, env: dict, workdir: str) -> float:
  cmd = [sys.executable, '-m', 'byol_jax.main',
         '--config=configs/byol_fashion_mnist.py', f'--workdir={workdir}',
         f'--config.num_train_steps={steps}', '--config.eval.baselines=False',
         '--config.optimizer.warmup_epochs=0']
  t0 = time.perf_counter()
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if r.returncode:
    raise RuntimeError(r.stderr[-3000:])
  return time.perf_counter() - t0


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--steps', type=int, default=20)
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    base = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
                BYOL_JAX_CACHE_DIR=os.path.join(tmp, 'cache'))
    for k in ('JAX_COMPILATION_CACHE_DIR', 'JAX_ENABLE_COMPILATION_CACHE',
              'XLA_FLAGS'):
      base.pop(k, None)
    cold = timed_run(args.steps, base, os.path.join(tmp, 'cold'))
    off = timed_run(args.steps,
                    dict(base, JAX_ENABLE_COMPILATION_CACHE='false'),
                    os.path.join(tmp, 'off'))
    warm = timed_run(args.steps, base, os.path.join(tmp, 'warm'))
  print(f'{os.cpu_count()} CPU cores; the demo config, {args.steps} steps, '
        'one fresh process each (wall seconds, start to exit):')
  print(f'  cache off           {off:7.1f} s')
  print(f'  cache empty (fills) {cold:7.1f} s')
  print(f'  cache filled        {warm:7.1f} s   ({off / warm:.2f}x faster '
        'than off)')


if __name__ == '__main__':
  main()
