"""Host memory on CPU: a train step's temporary buffer is reused, not
page-faulted in again every step.

XLA:CPU mallocs each execution's temporary buffer (every activation the
backward pass keeps: ~41 MB for the demo's SimSiam step, ~9.6 GB for
ResNet-50 at batch 32) and frees it afterwards. glibc's malloc serves
blocks over its mmap threshold (at most 32 MiB) with a fresh `mmap` and
returns them with `munmap`; from a thread's own arena (heaps of 64 MiB at
most) a bigger block always goes to `mmap`. So every step maps the buffer
anew and the kernel zero-fills it page by page: 10^4 minor page faults per
demo SimSiam step, 2.5 x 10^6 (10.7 s of system time in a 24 s step) per
ResNet-50 SimSiam step (`benchmarks/train_step.py --host_memory=keep,system`).

`configure()` keeps freed memory in the process instead:
- glibc's `mallopt`: no `mmap` for big blocks (M_MMAP_MAX = 0), no trimming
  of the heap's free top (M_TRIM_THRESHOLD = -1), so a freed buffer is
  there for the next step's;
- JAX's CPU client without asynchronous dispatch
  (`jax_cpu_enable_async_dispatch=False`), so a single-device program runs
  on the calling (main) thread, whose arena is the process heap, which has
  no size limit; multi-device CPU programs are dispatched as before.

The price: the heap keeps its high-water mark for the rest of the process
(a training process sits there every step anyway), and Python waits for
each single-device step instead of queuing the next one (the input
pipeline prefetches in its own threads either way).
"""

from __future__ import annotations

import ctypes
import os
import platform

from absl import logging

# Opt-out: BYOL_JAX_HOST_MEMORY=system leaves malloc and dispatch alone.
ENV = 'BYOL_JAX_HOST_MEMORY'
# glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def configure() -> list[str]:
  """Keeps freed host memory for reuse (module docstring); returns what was
  changed, for the log. Call it before JAX creates its CPU backend (the
  dispatch setting is read then); malloc's settings apply from the call on.
  A no-op with BYOL_JAX_HOST_MEMORY=system, on a C library other than
  glibc, and for the dispatch where JAX_CPU_ENABLE_ASYNC_DISPATCH is set.
  """
  choice = os.environ.get(ENV, 'keep')
  if choice not in ('keep', 'system'):
    raise ValueError(f"{ENV} must be 'keep' or 'system', got {choice!r}")
  if choice == 'system':
    return []
  changed = []
  if platform.libc_ver()[0] == 'glibc':
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success.
    if (libc.mallopt(_M_MMAP_MAX, 0) == 1
        and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1):
      changed.append('malloc keeps freed memory (M_MMAP_MAX=0, '
                     'M_TRIM_THRESHOLD=-1)')
  if 'JAX_CPU_ENABLE_ASYNC_DISPATCH' not in os.environ:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_cpu_enable_async_dispatch', False)
    changed.append('single-device CPU programs run on the calling thread '
                   '(jax_cpu_enable_async_dispatch=False)')
  return changed


def configure_and_log() -> None:
  changed = configure()
  if changed:
    logging.info('Host memory: %s; %s=system turns this off.',
                 '; '.join(changed), ENV)
