"""host_memory: a program's big temporary buffer is reused from one call to
the next, not page-faulted in again, measured in real processes."""

import json
import os
import platform
import subprocess
import sys

import pytest

from byol_jax import host_memory

# A child process: a jitted program whose temporary buffer is over 64 MiB
# (bigger than a glibc thread arena's heap, as ResNet-50's step is), run a
# few times; prints the minor page faults per call and the buffer's size.
_CHILD = r'''
import json, resource, sys
from byol_jax import host_memory
host_memory.configure()
import jax, jax.numpy as jnp

@jax.jit
def f(x):  # No matmul: Eigen's own packing buffers would fault as well.
  a = jnp.sin(x)
  b = jnp.cos(a[::-1]) * a
  return (jnp.sort(b, axis=1) * a).sum(0) + b.sum(0)

x = jnp.ones((2600, 2600), jnp.float32)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  f(x).block_until_ready()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({'temp_bytes': temp, 'faults_per_call': (after - before) / 3,
                  'async': jax.config.read('jax_cpu_enable_async_dispatch')}))
'''


def _run_child(**env):
  full = dict(os.environ, JAX_PLATFORMS='cpu', **env)
  full.pop('XLA_FLAGS', None)  # One CPU device: a single-device program.
  full.pop('JAX_CPU_ENABLE_ASYNC_DISPATCH', None)
  r = subprocess.run([sys.executable, '-c', _CHILD], env=full,
                     capture_output=True, text=True, timeout=300, check=True)
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc')
def test_a_big_temporary_buffer_is_reused_not_faulted_in_again():
  kept = _run_child(BYOL_JAX_HOST_MEMORY='keep')
  system = _run_child(BYOL_JAX_HOST_MEMORY='system')
  assert kept['temp_bytes'] > 64 * 2**20  # The case under test.
  pages = kept['temp_bytes'] / 4096
  # As malloc comes: every call maps its buffer anew and faults it in.
  assert system['faults_per_call'] > 0.5 * pages, system
  assert system['async'] is True
  # Kept: the freed buffer serves the next call (measured: ~1% of it).
  assert kept['faults_per_call'] < 0.05 * pages, kept
  assert kept['async'] is False


def test_an_unknown_setting_is_refused(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, 'off')
  with pytest.raises(ValueError, match="BYOL_JAX_HOST_MEMORY must be 'keep' "
                     "or 'system', got 'off'"):
    host_memory.configure()


def test_system_changes_nothing_and_a_users_dispatch_setting_stands(
    monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  # This process's malloc stays as it is: the child above tests mallopt.
  monkeypatch.setattr(platform, 'libc_ver', lambda: ('', ''))
  monkeypatch.setenv(host_memory.ENV, 'system')
  assert host_memory.configure() == []
  assert jax.config.read('jax_cpu_enable_async_dispatch')
  monkeypatch.setenv(host_memory.ENV, 'keep')
  monkeypatch.setenv('JAX_CPU_ENABLE_ASYNC_DISPATCH', 'true')
  changed = host_memory.configure()
  assert not any('dispatch' in c for c in changed), changed
  assert jax.config.read('jax_cpu_enable_async_dispatch')
