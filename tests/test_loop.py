"""The one training loop: periodic actions, interval metrics, the NaN stop,
throughput that excludes evaluation time, saves and signals."""

import json
import os
import signal
import time

import flax
import jax.numpy as jnp
import ml_collections
import pytest

from byol_jax import checkpointing, loop, metric_writer, run_length


@flax.struct.dataclass
class State:
  step: jnp.ndarray
  w: jnp.ndarray


def _step(loss_at=None):
  def step_fn(state, batch):
    loss = jnp.float32(batch)
    if loss_at is not None and int(state.step) + 1 == loss_at:
      loss = jnp.float32(jnp.nan)
    return State(state.step + 1, state.w + 1), {'loss': loss}
  return step_fn


def _records(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]


def _fit(tmp_path, state, step_fn, stop, manager=None, **kwargs):
  kwargs = dict(dict(num_steps=10, batch_size=4, steps_per_epoch=4,
                     log_every=2), **kwargs)
  writer = metric_writer.MetricWriter(str(tmp_path))
  out = loop.fit(state, step_fn, iter(range(1000)), stop=stop,
                 writer=writer, manager=manager,
                 config=ml_collections.ConfigDict({'x': 1}), **kwargs)
  writer.close()
  return out


def test_periods():
  assert loop.every(steps=7, epochs=3.0, num_examples=100, batch_size=10) == 7
  assert loop.every(epochs=0.5, num_examples=100, batch_size=10) == 5
  # 60,000 images at batch 64 (937.5 steps an epoch): every 2 epochs is 1875
  # steps, so the 7th period of a 14-epoch run (13125 steps) is its last
  # step, which the final evaluation covers (not 1874, 7 steps short).
  assert loop.every(epochs=2, num_examples=60_000, batch_size=64) == 1875
  assert 7 * 1875 == run_length.epochs_to_steps(14, 60_000, 64)
  assert loop.every() == 0
  assert [s for s in range(1, 10) if loop.due(s, 3)] == [3, 6, 9]
  assert not any(loop.due(s, 0) for s in range(1, 10))


def test_periodic_actions_metrics_and_throughput(tmp_path):
  """Actions run at their steps but not the last, the first due one only;
  each interval's mean is written with its epoch; the time actions take is
  not training time."""
  calls = []

  def slow_eval(state, step):
    calls.append(('eval', step, int(state.step)))
    time.sleep(0.25)
    return {'eval/acc': 0.5}

  def probe(state, step):
    calls.append(('probe', step))

  with loop.StopRequest() as stop:
    state, step = _fit(tmp_path, State(jnp.array(0), jnp.zeros(())),
                       _step(), stop,
                       periodic=[loop.Periodic(4, slow_eval, 'eval'),
                                 loop.Periodic(2, probe, 'probe')])
  assert step == 10 and int(state.step) == 10 and float(state.w) == 10
  assert calls == [('probe', 2), ('eval', 4, 4), ('probe', 6), ('eval', 8, 8)]
  records = _records(tmp_path)
  train = [r for r in records if 'loss' in r]
  assert [r['step'] for r in train] == [2, 4, 6, 8, 10]
  assert [r['loss'] for r in train] == [0.5, 2.5, 4.5, 6.5, 8.5]
  assert [r['epoch'] for r in train] == [0.5, 1.0, 1.5, 2.0, 2.5]
  assert [r['step'] for r in records if 'eval/acc' in r] == [4, 8]
  assert train[-1]['images_per_second'] > 200  # Counting the sleep: < 80.


def test_a_nan_stops_before_anything_is_saved(tmp_path):
  with loop.StopRequest() as stop, pytest.raises(
      loop.NonFiniteLossError, match='Loss is nan at step 4 .*No checkpoint'):
    _fit(tmp_path, State(jnp.array(0), jnp.zeros(())), _step(loss_at=3),
         stop, checkpoint_every=4,
         manager=checkpointing.make_manager(str(tmp_path)))
  assert not os.listdir(tmp_path / 'checkpoints')


def test_a_signal_saves_the_next_step_and_exits_128_plus_it(tmp_path):
  """A real SIGTERM mid-run: the loop finishes that step, saves it (once),
  and `raise_if_stopped` exits 143; the resumed loop continues from it."""
  manager = checkpointing.make_manager(str(tmp_path))
  inner = _step()

  def step_fn(state, batch):
    if int(state.step) == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return inner(state, batch)

  with loop.StopRequest() as stop:
    state, step = _fit(tmp_path, State(jnp.array(0), jnp.zeros(())),
                       step_fn, stop, manager=manager, checkpoint_every=3)
    assert (stop.signal, step) == (signal.SIGTERM, 5)
    with pytest.raises(SystemExit) as e:
      stop.raise_if_stopped(step)
  assert e.value.code == 128 + signal.SIGTERM
  assert sorted(manager.all_steps()) == [3, 5]
  restored = checkpointing.restore(
      manager, State(jnp.array(0), jnp.zeros(())))
  assert int(restored.step) == 5 and float(restored.w) == 5
  with loop.StopRequest() as stop:
    state, step = _fit(tmp_path, restored, inner, stop, manager=manager,
                       checkpoint_every=3)
  assert step == 10 and float(state.w) == 10
  assert sorted(manager.all_steps()) == [6, 9, 10]  # Keeps 3.


def test_profile_steps_write_a_trace_after_the_warm_up(tmp_path):
  """jax.profiler's trace (an .xplane.pb under plugins/profile/, what
  TensorBoard's Profile tab and Perfetto open) of steps 3-4."""
  with loop.StopRequest() as stop:
    _fit(tmp_path, State(jnp.array(0), jnp.zeros(())), _step(), stop,
         num_steps=6, profile_dir=str(tmp_path / 'profile'), profile_steps=2)
  traces = list((tmp_path / 'profile').rglob('*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
