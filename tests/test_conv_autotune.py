"""model.conv_impl='auto': the layer shapes found, the choice per shape, the
per-machine cache, the network it builds, the persistent compilation cache."""

import fcntl
import json
import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from byol_jax import config_lib, conv_autotune, networks


def _model(**kw):
  m = config_lib.base_config().model
  m.update(dict(depth=18, width=1 / 16, stem='small', projector_hidden=(16,),
                predictor_hidden=(16,), projection_dim=8, **kw))
  return m


# The distinct convolutions of a ResNet-18 (small stem, width 1/16: 4-8-16-32
# channels) on 8x8x1 images, written out from the architecture (He et al.
# 2016, Table 1): (side, cin, cout, kernel, stride) in network order.
EXPECTED = [(8, 1, 4, 3, 1),    # stem
            (8, 4, 4, 3, 1),    # stage 1 (both blocks)
            (8, 4, 8, 3, 2), (4, 8, 8, 3, 1), (8, 4, 8, 1, 2),
            (4, 8, 16, 3, 2), (2, 16, 16, 3, 1), (4, 8, 16, 1, 2),
            (2, 16, 32, 3, 2), (1, 32, 32, 3, 1), (2, 16, 32, 1, 2)]


def test_conv_shapes_are_the_networks_distinct_convolutions():
  encoder = networks.build_encoder(_model(conv_impl='auto'))
  convs = conv_autotune.conv_shapes(encoder, (8, 8, 1), batch=2)
  got = [(lhs[1], lhs[3], rhs[3], rhs[0], s[0])
         for lhs, rhs, s, _, _ in convs]
  assert got == EXPECTED
  assert all(lhs[0] == 2 and dtype == jnp.float32
             for lhs, _, _, _, dtype in convs)
  # TF 'SAME' padding as lax computes it: odd kernels centred, a stride-2
  # 3x3 on an even side padded (0, 1).
  assert convs[0][3] == ((1, 1), (1, 1)) and convs[2][3] == ((0, 1), (0, 1))


# The 3x3 stride-1 ones, which winograd_conv (both tiles) also computes.
WINOGRAD = [c for c in EXPECTED if c[3] == 3 and c[4] == 1]
# xla, matmul (+ Winograd F(2x2, 3x3) and F(4x4, 3x3)).
TIMINGS = 2 * len(EXPECTED) + 2 * len(WINOGRAD)


def _fake_timings(monkeypatch, faster, winograd_faster=(),
                  winograd4_faster=()):
  """matmul_conv 'takes' 1 ms on the layers in `faster` and 3 ms elsewhere,
  winograd_conv 0.5 ms on those in `winograd_faster` and 4 ms elsewhere,
  winograd4_conv 0.25 ms on those in `winograd4_faster` and 5 ms
  elsewhere, XLA's 2 ms everywhere; records every timing made."""
  calls = []

  def fake(conv, lhs, rhs, strides, padding, dtype, **kw):
    del padding, dtype, kw
    calls.append((conv, lhs))
    layer = (lhs[1], lhs[3], rhs[3], rhs[0], strides[0])
    if conv is networks.matmul_conv:
      return 1e-3 if layer in faster else 3e-3
    if conv is networks.winograd_conv:
      assert layer in WINOGRAD  # Timed only where it applies.
      return 0.5e-3 if layer in winograd_faster else 4e-3
    if conv is networks.winograd4_conv:
      assert layer in WINOGRAD
      return 0.25e-3 if layer in winograd4_faster else 5e-3
    return 2e-3
  monkeypatch.setattr(conv_autotune, 'seconds_per_call', fake)
  return calls


def test_plan_keeps_the_faster_per_shape_and_caches_it(monkeypatch, tmp_path):
  faster = set(EXPECTED[:2] + EXPECTED[5:6])
  calls = _fake_timings(monkeypatch, faster)
  path = str(tmp_path / 'conv_impl.json')
  model = _model(conv_impl='auto')
  plan = conv_autotune.plan(model, (8, 8, 1), 2, path=path)
  assert len(calls) == TIMINGS
  assert [(sig[0][0], sig[0][2], sig[1][3], sig[1][0], sig[2][0])
          for sig, impl in plan] == EXPECTED[:2] + EXPECTED[5:6]
  assert all(impl == 'matmul' for _, impl in plan)
  saved = json.load(open(path))
  entries = saved['machines'][conv_autotune.machine()]
  assert len(entries) == len(EXPECTED)
  assert sorted(e['impl'] for e in entries.values()) == (
      ['matmul'] * 3 + ['xla'] * 8)
  # A later run on this machine: the same plan, nothing timed.
  calls.clear()
  assert conv_autotune.plan(model, (8, 8, 1), 2, path=path) == plan
  assert not calls
  # Another batch is another measurement (timed at the run's batch).
  conv_autotune.plan(model, (8, 8, 1), 4, path=path)
  assert len(calls) == TIMINGS
  assert len(json.load(open(path))['machines'][conv_autotune.machine()]) == (
      2 * len(EXPECTED))


def test_a_shape_another_run_saved_first_keeps_its_choice(monkeypatch,
                                                         tmp_path):
  """Two runs starting together on one machine both time a missing shape;
  on a loaded machine they often disagree (seen: 0.02 ms convolutions,
  different plans from run to run). The one that saves first wins, and the
  other runs its plan too: one program per shape per machine."""
  model, path = _model(conv_impl='auto'), tmp_path / 'conv_impl.json'
  _fake_timings(monkeypatch, set(EXPECTED[:1]))   # The other run: stem.
  first = conv_autotune.plan(model, (8, 8, 1), 2, path=str(path))
  assert len(first) == 1
  data = json.loads(path.read_text())
  entries = data['machines'][conv_autotune.machine()]
  # It had saved the stem and four more shapes when this run read the file
  # (an empty one); it saves them while this run times.
  _, keys = _entries(model)
  keys = keys[:5]
  data['machines'][conv_autotune.machine()] = {k: entries[k] for k in keys}
  other = json.dumps(data)
  path.unlink()
  calls = _fake_timings(monkeypatch, set(EXPECTED[1:2]))  # This one: stage 1.
  timing = conv_autotune.seconds_per_call

  def concurrent(*a, **k):
    if len(calls) == 1:
      path.write_text(other)
    return timing(*a, **k)
  monkeypatch.setattr(conv_autotune, 'seconds_per_call', concurrent)
  plan = conv_autotune.plan(model, (8, 8, 1), 2, path=str(path))
  assert len(calls) == TIMINGS   # Timed everything (read an empty file)...
  saved = json.loads(path.read_text())['machines'][conv_autotune.machine()]
  assert len(saved) == len(EXPECTED)
  for k in keys:  # ...kept what the other run saved...
    assert saved[k] == entries[k]
  # ...and runs the saved choices: the other run's where it saved first,
  # its own elsewhere.
  expected_plan = tuple(
      (networks.conv_signature(*c), saved[conv_autotune._key(c)]['impl'])  # pylint: disable=protected-access
      for c in _entries(model)[0]
      if saved[conv_autotune._key(c)]['impl'] != 'xla')  # pylint: disable=protected-access
  assert plan == expected_plan
  assert conv_autotune.plan(model, (8, 8, 1), 2, path=str(path)) == plan


def test_saving_waits_for_another_run_holding_the_cache_lock(tmp_path):
  path = str(tmp_path / 'conv_impl.json')
  conv = ((2, 8, 8, 1), (1, 1, 1, 4), (2, 2), ((0, 0), (0, 0)), 'float32')
  entry = {'impl': 'matmul', 'xla_ms': 2.0, 'matmul_ms': 1.0}
  done = threading.Event()
  with open(path + '.lock', 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    writer = threading.Thread(target=lambda: (
        conv_autotune._write_cache(path, {conv: entry}), done.set()))  # pylint: disable=protected-access
    writer.start()
    assert not done.wait(0.5) and not os.path.exists(path)
  writer.join(10)
  assert done.is_set()
  assert json.load(open(path))['machines'][conv_autotune.machine()] == {
      conv_autotune._key(conv): entry}  # pylint: disable=protected-access


def test_a_tie_goes_to_xla(monkeypatch, tmp_path):
  """Within 3% of XLA's is a tie on a noisy machine: XLA's (least memory)."""
  monkeypatch.setattr(conv_autotune, 'seconds_per_call',
                      lambda conv, *a, **k: {networks.matmul_conv: 0.99e-3,
                                             networks.winograd_conv: 0.975e-3,
                                             networks.winograd4_conv: 0.98e-3,
                                             }.get(conv, 1e-3))
  assert conv_autotune.plan(_model(conv_impl='auto'), (8, 8, 1), 2,
                            path=str(tmp_path / 'c.json')) == ()


@pytest.mark.parametrize('content', [
    '{not json', '[]', '{"version": 3, "machines": []}',
    '{"version": 3, "machines": {"MACHINE": {"k": {"impl": "cudnn"}}}}',
    # Version 2: Winograd F(2x2, 3x3) as sums of strided slices, slower
    # than today's; no F(4x4, 3x3). Its choices are timed again.
    '{"version": 2, "machines": {"MACHINE": {}}}',
    '{"version": 99, "machines": {"MACHINE": {}}}', ''])
def test_a_damaged_or_foreign_cache_is_measured_again(monkeypatch, tmp_path,
                                                      content):
  calls = _fake_timings(monkeypatch, set(EXPECTED[:1]))
  path = tmp_path / 'conv_impl.json'
  path.write_text(content.replace('MACHINE', conv_autotune.machine()))
  plan = conv_autotune.plan(_model(conv_impl='auto'), (8, 8, 1), 2,
                            path=str(path))
  assert len(plan) == 1 and len(calls) == TIMINGS
  # ... and the file is whole again, with this machine's timings.
  saved = json.loads(path.read_text())
  assert len(saved['machines'][conv_autotune.machine()]) == len(EXPECTED)



def _entries(model):
  """`model`'s convolution shapes and their cache keys."""
  encoder = networks.build_encoder(model)
  convs = conv_autotune.conv_shapes(encoder, (8, 8, 1), batch=2)
  return convs, [conv_autotune._key(c) for c in convs]  # pylint: disable=protected-access


def test_a_cache_entry_this_code_cannot_run_is_measured_again(
    monkeypatch, tmp_path):
  """A crafted or older file cannot make a layer run an implementation
  that does not compute it (Winograd on a 1x1 / stride-2 layer raises at
  trace time), nor skip a timing the log and the choice need."""
  model = _model(conv_impl='auto')
  convs, keys = _entries(model)
  shortcut = next(i for i, c in enumerate(convs) if c[1][0] == 1)
  stem = 0
  ms = {'xla_ms': 2.0, 'matmul_ms': 3.0, 'winograd_ms': 1.0,
        'winograd4_ms': 1.5}
  good = {k: dict(ms, impl='xla') for k in keys}
  good[keys[shortcut]] = dict(ms, impl='winograd')      # Cannot run there.
  good[keys[stem]] = {'impl': 'winograd'}               # No timings.
  path = tmp_path / 'conv_impl.json'
  path.write_text(json.dumps({'version': 3, 'machines': {
      conv_autotune.machine(): good}}))
  calls = _fake_timings(monkeypatch, set())
  plan = conv_autotune.plan(model, (8, 8, 1), 2, path=str(path))
  assert plan == ()  # Both re-timed: XLA's wins with the fake timings.
  assert sorted({lhs for _, lhs in calls}) == sorted(
      {convs[shortcut][0], convs[stem][0]})
  assert len(calls) == 2 + 4   # 1x1/2: xla, matmul; 3x3/1 stem: all four.


def test_winograd_is_chosen_where_fastest_and_runs_there(monkeypatch,
                                                         tmp_path):
  """The four-way choice: Winograd F(2x2, 3x3) or F(4x4, 3x3) on the 3x3/1
  layers where it is fastest, matmul where that is, XLA's elsewhere; the
  planned network has the same variables and outputs, with no XLA
  convolution left on the Winograd layers (their tile matmuls are
  dot_generals)."""
  _fake_timings(monkeypatch, set(EXPECTED[2:3]),
                winograd_faster=set(WINOGRAD[1:3]),
                winograd4_faster=set(WINOGRAD[2:3]))
  model = _model(conv_impl='auto')
  path = tmp_path / 'c.json'
  plan = conv_autotune.plan(model, (8, 8, 1), 2, path=str(path))
  got = {(sig[0][0], sig[0][2], sig[1][3], sig[1][0], sig[2][0]): impl
         for sig, impl in plan}
  assert got == {EXPECTED[2]: 'matmul', WINOGRAD[1]: 'winograd',
                 WINOGRAD[2]: 'winograd4'}
  entry = json.loads(path.read_text())['machines'][conv_autotune.machine()]
  for impl in ('winograd', 'winograd4'):
    assert sum(f'{impl}_ms' in e for e in entry.values()) == len(WINOGRAD)
  planned = networks.build_network(model, 10, conv_plan=plan)
  plain = networks.build_network(model, 10)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  variables = plain.init(jax.random.key(1), x, train=True)
  # Stage 1's four 3x3 4->4 (F(2x2, 3x3)) and stage 2's three 3x3/1 8->8
  # (F(4x4, 3x3)) convolutions run Winograd; stage 2's first 3x3/2 runs as
  # a matmul.
  assert _conv_count(planned, variables, x) == 20 - 4 - 3 - 1
  out = planned.apply(variables, x, train=False)
  ref = plain.apply(variables, x, train=False)
  for k in ref:
    np.testing.assert_allclose(out[k], ref[k], atol=1e-5, rtol=1e-5)


def test_winograd_is_a_candidate_for_float32_3x3_stride_1_only():
  conv = lambda k, s, dtype: ((2, 8, 8, 4), (k, k, 4, 4), (s, s),  # noqa: E731
                              ((1, 1), (1, 1)), dtype)
  assert conv_autotune.candidates(conv(3, 1, jnp.float32)) == (
      'xla', 'matmul', 'winograd', 'winograd4')
  for k, s, dtype in [(3, 2, jnp.float32), (1, 1, jnp.float32),
                      (7, 1, jnp.float32), (3, 1, jnp.bfloat16)]:
    assert conv_autotune.candidates(conv(k, s, dtype)) == ('xla', 'matmul')

def test_an_unwritable_cache_only_costs_a_measurement(monkeypatch, tmp_path):
  _fake_timings(monkeypatch, set(EXPECTED[:1]))
  blocker = tmp_path / 'file'
  blocker.write_text('')
  plan = conv_autotune.plan(_model(conv_impl='auto'), (8, 8, 1), 2,
                            path=str(blocker / 'sub' / 'conv_impl.json'))
  assert len(plan) == 1


def test_no_timing_unless_auto_on_cpu(monkeypatch, tmp_path):
  calls = _fake_timings(monkeypatch, set(EXPECTED))
  path = str(tmp_path / 'c.json')
  for impl in ('xla', 'matmul'):
    assert conv_autotune.plan(_model(conv_impl=impl), (8, 8, 1), 2,
                              path=path) == ()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert conv_autotune.plan(_model(conv_impl='auto'), (8, 8, 1), 2,
                            path=path) == ()
  assert not calls and not os.path.exists(path)


def _conv_count(network, variables, x):
  jaxpr = jax.make_jaxpr(lambda v, x: network.apply(
      v, x, train=True, mutable=['batch_stats']))(variables, x)
  return sum(1 for _ in conv_autotune._convs(jaxpr.jaxpr))  # pylint: disable=protected-access


def test_the_planned_network_is_the_same_network(monkeypatch, tmp_path):
  """A plan changes how layers run, not what: the same variables (a
  checkpoint moves freely), the same outputs; the planned shapes run as
  matmuls (no XLA convolution left for them), the others as XLA's."""
  _fake_timings(monkeypatch, set(EXPECTED[1:2] + EXPECTED[3:4]))
  model = _model(conv_impl='auto')
  plan = conv_autotune.plan(model, (8, 8, 1), 2,
                            path=str(tmp_path / 'c.json'))
  planned = networks.build_network(model, 10, conv_plan=plan)
  plain = networks.build_network(model, 10)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  variables = plain.init(jax.random.key(1), x, train=True)
  assert jax.tree.structure(variables) == jax.tree.structure(
      jax.eval_shape(lambda k, x: planned.init(k, x, train=True),
                     jax.random.key(1), x))
  # A ResNet-18 has 20 convolutions; planned: stage 1's four 3x3 4->4 and
  # stage 2's three 3x3/1 8->8 ones.
  assert _conv_count(plain, variables, x) == 20
  assert _conv_count(planned, variables, x) == 20 - 4 - 3
  out = planned.apply(variables, x, train=False)
  ref = plain.apply(variables, x, train=False)
  for k in ref:
    np.testing.assert_allclose(out[k], ref[k], atol=1e-5, rtol=1e-5)
  # Another batch (the evaluation's) takes the same choices.
  x5 = jax.random.normal(jax.random.key(0), (5, 8, 8, 1))
  assert _conv_count(planned, variables, x5) == 13


def test_the_default_is_auto_and_old_configs_keep_theirs():
  assert config_lib.base_config().model.conv_impl == 'auto'
  old = ml_collections.ConfigDict(dict(depth=18, width=0.25, stem='small'))
  assert networks.build_encoder(old).conv_impl == 'xla'


def test_seconds_per_call_times_a_real_convolution():
  s = conv_autotune.seconds_per_call(networks.matmul_conv, (2, 8, 8, 3),
                                     (3, 3, 3, 4), (1, 1), 'SAME',
                                     jnp.float32, repeats=2)
  assert 0 < s < 5


def test_cli_runs_use_a_persistent_compilation_cache_on_cpu(tmp_path):
  code = ('import jax; from byol_jax import cli; cli.compilation_cache(); '
          'print(jax.config.jax_compilation_cache_dir)')
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('JAX_COMPILATION_CACHE')}
  env.update(BYOL_JAX_CACHE_DIR=str(tmp_path), JAX_PLATFORMS='cpu')
  run = lambda env: subprocess.run(  # noqa: E731
      [sys.executable, '-c', code], env=env, capture_output=True, text=True,
      check=True).stdout.strip().splitlines()[-1]
  assert run(env) == str(tmp_path / 'xla')
  assert run(dict(env, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'mine'))) == (
      str(tmp_path / 'mine'))
  assert run(dict(env, JAX_ENABLE_COMPILATION_CACHE='false')) == 'None'
