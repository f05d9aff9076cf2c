"""model.conv_impl='auto': each convolution shape runs the implementation
that is fastest on the machine the run is on.

On CPU, XLA's convolution, `networks.matmul_conv` (one matmul over the
kernel's shifted slices) and, for 3x3 stride-1 layers,
`networks.winograd_conv` (Winograd F(2x2, 3x3) and F(4x4, 3x3)) win on
different layers, and which one wins depends on the CPU and the layer's
channels: matmul convolutions made a width-1/4 ResNet-18 step 1.18-1.31x
faster on one x86 CPU and 0.71x on an AMD EPYC (Zen 4), while on that EPYC
they still pay at width 1, and Winograd wins its 3x3 stride-1 layers from
64 channels up (docs/performance.md). So no fixed rule: `plan` finds the
network's convolution shapes (from the traced forward pass), times forward
+ backward of each with every implementation that computes it at the run's
per-device batch, and keeps the fastest. The choices are cached per machine
(CPU model, usable cores, JAX and jaxlib versions) in
`$BYOL_JAX_CACHE_DIR` (default `~/.cache/byol_jax`) so a later run starts
at once; each choice is logged. On GPU/TPU the vendor convolutions are the
fast path: XLA's, untimed. In a multi-process run process 0 decides and
the others take its plan, so every process compiles the same program.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Callable, Iterator, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from byol_jax import networks

IMPLS = ('xla', 'matmul', 'winograd', 'winograd4')
CONVS = {'xla': jax.lax.conv_general_dilated, **networks.PLANNED_CONVS}
# Another implementation must be this much faster than XLA's to be chosen:
# within it, the two are a tie on a noisy machine, and XLA's uses the least
# memory (no kh*kw patches, no 2.25-4x-sized Winograd tiles).
MARGIN = 0.97
# 2: Winograd timings added; 3: Winograd's transforms as matmuls, and
# F(4x4, 3x3) (an older file is measured again).
_CACHE_VERSION = 3


def cache_dir() -> str:
  return os.environ.get('BYOL_JAX_CACHE_DIR') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
      'byol_jax')


def machine() -> str:
  """What the timings depend on: CPU model, usable cores, JAX versions."""
  model = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  import jaxlib  # pylint: disable=g-import-not-at-top
  return (f'{model}, {cores} cores, jax {jax.__version__}, jaxlib '
          f'{jaxlib.__version__}')


def _subjaxprs(params) -> Iterator:
  for v in params.values():
    for x in (v if isinstance(v, (tuple, list)) else (v,)):
      if hasattr(x, 'eqns'):
        yield x
      elif hasattr(getattr(x, 'jaxpr', None), 'eqns'):
        yield x.jaxpr


def _convs(jaxpr) -> Iterator[tuple]:
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      lhs, rhs = (v.aval for v in eqn.invars)
      p = eqn.params
      nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                            ('NHWC', 'HWIO', 'NHWC'))
      if (p['dimension_numbers'] == nhwc and p['feature_group_count'] == 1
          and p['batch_group_count'] == 1
          and set(p['lhs_dilation']) | set(p['rhs_dilation']) <= {1}):
        yield lhs.shape, rhs.shape, p['window_strides'], p['padding'], \
            lhs.dtype
    for sub in _subjaxprs(eqn.params):
      yield from _convs(sub)


def conv_shapes(encoder: networks.ResNet, image_shape, batch: int
                ) -> list[tuple]:
  """The distinct (lhs shape, rhs shape, strides, pads, dtype) of the
  encoder's convolutions at `batch`, in network order (read from the traced
  forward pass, so it is exactly what the network runs)."""
  x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  xla = encoder.clone(conv_impl='xla', conv_plan=())
  jaxpr = jax.make_jaxpr(
      lambda x: xla.init(jax.random.key(0), x, train=True))(x)
  seen, out = set(), []
  for conv in _convs(jaxpr.jaxpr):
    sig = networks.conv_signature(*conv)
    if sig not in seen:
      seen.add(sig)
      out.append(conv)
  return out


def seconds_per_call(conv: Callable, lhs_shape, rhs_shape, strides, padding,
                     dtype, repeats: int = 3, budget_s: float = 1.0
                     ) -> float:
  """Median seconds of jit(grad(sum(conv(x, w)**2))) w.r.t. x and w: one
  convolution's forward and backward, after a warm-up call; fewer repeats
  (at least one) once `budget_s` is spent."""
  def loss(x, w):
    y = conv(x, w, strides, padding,
             dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(jnp.square(y.astype(jnp.float32)))
  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  x = jax.random.normal(jax.random.key(0), lhs_shape, dtype)
  w = (jax.random.normal(jax.random.key(1), rhs_shape, dtype) * 0.1
       ).astype(dtype)
  jax.block_until_ready(step(x, w))  # Compile and warm up.
  times, spent = [], 0.0
  while len(times) < repeats and (not times or spent < budget_s):
    t0 = time.perf_counter()
    jax.block_until_ready(step(x, w))
    times.append(time.perf_counter() - t0)
    spent += times[-1]
  return statistics.median(times)


def describe(conv) -> str:
  (n, h, w, cin), (kh, kw, _, cout), (s, _), _, dtype = conv
  return (f'b{n} {h}x{w} {cin}->{cout} {kh}x{kw}/{s}'
          + ('' if jnp.dtype(dtype) == jnp.float32 else f' {dtype}'))


def _key(conv) -> str:
  lhs, rhs, strides, pads, dtype = conv
  return json.dumps([list(lhs), list(rhs), list(strides),
                     [list(p) for p in pads], jnp.dtype(dtype).name])


def _read_cache(path: str) -> dict:
  """The cache file's entries for this machine; {} for a missing, foreign
  or damaged file (it is only a cache: a bad one costs a re-measurement)."""
  try:
    with open(path) as f:
      return _machine_entries(json.load(f))
  except (OSError, ValueError):
    return {}


def _machine_entries(data) -> dict:
  """This machine's valid entries of a parsed cache file; {} unless it has
  this code's version."""
  try:
    entries = data['machines'][machine()]
    if data.get('version') != _CACHE_VERSION or not isinstance(entries,
                                                                dict):
      return {}
    return {k: v for k, v in entries.items()
            if isinstance(v, dict) and v.get('impl') in IMPLS}
  except (KeyError, TypeError, AttributeError):
    return {}


def _write_cache(path: str, new: dict) -> dict:
  """Adds `new` ({conv: entry}) to the file's entries for this machine and
  returns {conv: the entry the file now holds}: a usable entry another run
  saved since this one read the file stays (the first timing of a shape
  wins). Read, merge and write hold a lock on `path`.lock, and the write is
  atomic (a reader sees the old file or the new one, never half of one)."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = open(path + '.lock', 'a')  # pylint: disable=consider-using-with
  except OSError as e:  # A read-only home: measure again next time.
    logging.warning('Could not save the convolution timings to %s (%s).',
                    path, e)
    return dict(new)
  with lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      with open(path) as f:
        data = json.load(f)
      if (data.get('version') != _CACHE_VERSION
          or not isinstance(data.get('machines'), dict)):
        raise ValueError
    except (OSError, ValueError, AttributeError):
      data = {'version': _CACHE_VERSION, 'machines': {}}
    # Other machines' entries stay as they are; this one's keep what is
    # valid, and the shapes another run saved first.
    entries = _machine_entries(data)
    kept = {conv: entries.get(_key(conv)) for conv in new}
    kept = {conv: e if _usable(e, conv) else new[conv]
            for conv, e in kept.items()}
    entries.update({_key(conv): e for conv, e in kept.items()})
    data['machines'][machine()] = entries
    try:
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
      with os.fdopen(fd, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
      os.replace(tmp, path)
    except OSError as e:
      logging.warning('Could not save the convolution timings to %s (%s).',
                      path, e)
    return kept


def candidates(conv) -> tuple:
  """The implementations that compute `conv` (lhs, rhs, strides, pads,
  dtype): all of IMPLS, Winograd only for float32 3x3 stride-1 kernels
  (its transforms rounded to bfloat16 give ~2.5x the direct convolution's
  error with F(2x2, 3x3), 0.7% vs 0.3% relative on a 64-channel layer)."""
  _, rhs, strides, _, dtype = conv
  winograd = (networks.winograd_applies(rhs, strides)
              and jnp.dtype(dtype) == jnp.float32)
  return tuple(i for i in IMPLS if winograd or not i.startswith('winograd'))


def choose(times: dict) -> str:
  """The implementation to run, from {impl: time} (`times['xla']` among
  them): the fastest, unless it is within MARGIN of XLA's."""
  best = min(times, key=times.get)
  return best if times[best] < MARGIN * times['xla'] else 'xla'


def _usable(entry: Optional[dict], conv) -> bool:
  """Whether a cache entry can decide `conv`: it names an implementation
  that computes it, and carries every candidate's timing (for the log)."""
  impls = candidates(conv)
  return (isinstance(entry, dict) and entry.get('impl') in impls
          and all(isinstance(entry.get(f'{i}_ms'), (int, float))
                  for i in impls))


def measure(convs: list[tuple], path: str) -> dict:
  """{conv: {'impl', 'xla_ms', 'matmul_ms'[, 'winograd_ms',
  'winograd4_ms'], 'cached'}}: from the cache file `path`, or timed now
  (and added to it). Where a concurrent run on this machine saved a shape
  first, its choice is used: once a shape is in the file, every run on the
  machine runs the same program for it (on a loaded machine two timings of
  a 0.05 ms convolution often disagree, and each choice rounds
  differently)."""
  cached = _read_cache(path)
  fresh = {}
  for conv in convs:
    if not _usable(cached.get(_key(conv)), conv):  # Missing, or not ours.
      ms = {impl: 1e3 * seconds_per_call(CONVS[impl], *conv)
            for impl in candidates(conv)}
      fresh[conv] = {'impl': choose(ms),
                     **{f'{impl}_ms': round(t, 3) for impl, t in ms.items()}}
  saved = _write_cache(path, fresh) if fresh else {}
  return {conv: dict(saved.get(conv) or cached[_key(conv)],
                     cached=conv not in fresh)
          for conv in convs}


def plan(model_config, image_shape, batch: int,
         path: Optional[str] = None) -> tuple:
  """The `networks.ResNet.conv_plan` for `model_config` at per-device
  `batch` and `image_shape` (H, W, C): () unless conv_impl is 'auto' on a
  CPU backend. Every process must call it (process 0's plan is used)."""
  if model_config.get('conv_impl', 'xla') != 'auto':
    return ()
  if jax.default_backend() != 'cpu':
    logging.info("model.conv_impl='auto' on %s: XLA's convolutions.",
                 jax.default_backend())
    return ()
  path = path or os.path.join(cache_dir(), 'conv_impl.json')
  encoder = networks.build_encoder(model_config)
  convs = conv_shapes(encoder, tuple(image_shape), batch)
  choices = {}
  if jax.process_index() == 0:
    choices = measure(convs, path)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    codes = np.array([IMPLS.index(choices.get(c, {}).get('impl', 'xla'))
                      for c in convs], np.int32)
    codes = np.asarray(multihost_utils.broadcast_one_to_all(codes))
    impls = [IMPLS[i] for i in codes]
  else:
    impls = [choices[c]['impl'] for c in convs]
  if choices:
    fresh = sum(not v['cached'] for v in choices.values())
    logging.info(
        "model.conv_impl='auto': matmul_conv for %d, winograd_conv "
        'F(2x2, 3x3) for %d and F(4x4, 3x3) for %d of %d convolution '
        'shapes on %s (%s; %s):\n%s',
        impls.count('matmul'), impls.count('winograd'),
        impls.count('winograd4'), len(convs),
        machine(), 'timed now' if fresh else 'timed in an earlier run',
        path, '\n'.join(f'  {describe(c):28s} ' + '  '.join(
            f'{impl} {choices[c][impl + "_ms"]:8.2f} ms'
            for impl in candidates(c)) + f' -> {i}'
                        for c, i in zip(convs, impls)))
  return tuple((networks.conv_signature(*c), i)
               for c, i in zip(convs, impls) if i != 'xla')
