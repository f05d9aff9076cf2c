"""The mapped train step: 8 devices == 1 device, traced once, EMA, SimSiam."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from byol_jax import (augment, device_augment, networks, optim, parallel,
                      train_step as ts)
from conftest import tiny_model_config

GLOBAL_BATCH = 16
IMAGE_SHAPE = (8, 8, 1)


def _setup(method='byol', beta=0.0, compute_dtype='float32'):
  if method == 'byol':
    model = tiny_model_config('byol')
    model.compute_dtype = compute_dtype
    opt_cfg = dict(name='lars', weight_decay=1e-4, trust_coefficient=1e-3,
                   momentum=0.9)
    loss = dict(name='byol', alpha=0.1, beta=beta, stop_gradient=True)
    use_target = True
  else:
    model = tiny_model_config('simsiam')
    opt_cfg = dict(name='sgd', weight_decay=1e-4, momentum=0.9,
                   fixed_predictor_lr=True)
    loss = dict(name='simsiam', alpha=0.1, beta=0.0, stop_gradient=True)
    use_target = False
  network = networks.build_network(model, num_classes=3,
                                   bn_axis_name=parallel.AXIS)
  # SimSiam's plain SGD at its paper LR. LARS's trust ratio bounds BYOL's
  # kernels but not its biases and BatchNorm parameters, which the official
  # order moves by lr x the momentum of every gradient since step 0: at 0.1
  # three steps keep them where float32 reduction order stays below 1e-4.
  peak = 0.1 if method == 'byol' else 0.05
  lr = optim.learning_rate_schedule(peak, total_steps=10, warmup_steps=2)
  optimizer = optim.build_optimizer(ml_collections.ConfigDict(opt_cfg), lr,
                                    peak)
  state = ts.init_state(jax.random.key(0), network, optimizer, IMAGE_SHAPE,
                        use_target=use_target)
  kwargs = dict(network=network, optimizer=optimizer, lr_schedule=lr,
                tau_schedule=optim.tau_schedule(0.9, 10),
                loss_config=ml_collections.ConfigDict(loss))
  return state, kwargs


def _batches(n):
  rng = np.random.RandomState(0)
  return [dict(view1=rng.randn(GLOBAL_BATCH, *IMAGE_SHAPE).astype(np.float32),
               view2=rng.randn(GLOBAL_BATCH, *IMAGE_SHAPE).astype(np.float32),
               label=rng.randint(0, 3, GLOBAL_BATCH).astype(np.int32))
          for _ in range(n)]


def _run(devices, state, kwargs, batches):
  mesh = parallel.make_mesh(devices)
  step = ts.make_train_step(mesh, **kwargs)
  # From host copies: the step donates its input state.
  state = parallel.replicate(jax.device_get(state), mesh)
  rng = parallel.replicate(jax.random.key(1), mesh)
  metrics = []
  for b in batches:
    state, m = step(state, parallel.shard_batch(b, mesh), rng)
    metrics.append(m)
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize('method,beta', [
    ('byol', 0.0),
    # The same mapping with SimSiam's branches (no target, SGD) and with
    # negatives (InfoNCE's gather is also checked in test_losses.py): ~1 min
    # each, in `make test-slow` to keep the default suite under 15 minutes.
    pytest.param('simsiam', 0.0, marks=pytest.mark.slow),
    pytest.param('byol', 1.0, marks=pytest.mark.slow)])
def test_eight_devices_equal_one_device(devices, monkeypatch, method, beta):
  """Cross-replica BN + pmean'd grads: the sharded step is the global step."""
  state, kwargs = _setup(method, beta)
  # The step function is traced once per mesh, however many steps run.
  traced = chex.assert_max_traces(ts.train_step, n=2)
  monkeypatch.setattr(ts, 'train_step', traced)
  batches = _batches(3)
  one_state, one_metrics = _run(devices[:1], state, kwargs, batches)
  eight_state, eight_metrics = _run(devices, state, kwargs, batches)
  chex.clear_trace_counter()
  for name in ('online_params', 'online_batch_stats', 'target_params',
               'target_batch_stats', 'opt_state', 'step'):
    # Float32 reductions run in another order on 8 devices; after 3 steps
    # that is ~1e-4. A wrong gradient scale or per-device BN differs by O(1).
    chex.assert_trees_all_close(getattr(eight_state, name),
                                getattr(one_state, name), rtol=1e-3,
                                atol=1e-4)
  for m1, m8 in zip(one_metrics, eight_metrics):
    np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m8['collapse/normalized_std'],
                               m1['collapse/normalized_std'], rtol=1e-4,
                               atol=1e-5)
  assert int(eight_state.step) == 3
  # Something was learned: the parameters moved.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state.online_params,
                       eight_state.online_params)
  assert max(jax.tree.leaves(moved)) > 0


def test_target_is_ema_of_updated_online_params(devices):
  state, kwargs = _setup('byol')
  new_state, _ = _run(devices[:1], state, kwargs, _batches(1))
  tau = float(kwargs['tau_schedule'](0))
  expected = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o,
                          state.target_params, new_state.online_params)
  chex.assert_trees_all_close(new_state.target_params, expected, rtol=1e-5,
                              atol=1e-7)
  # The target's BatchNorm statistics are its own (updated by its forward).
  assert not np.allclose(
      new_state.target_batch_stats['encoder']['stem_bn']['mean'],
      new_state.online_batch_stats['encoder']['stem_bn']['mean'])


def test_target_init_independent_or_copy():
  state, _ = _setup('byol')
  leaf = lambda p: p['encoder']['stem_conv']['kernel']  # noqa: E731
  assert not np.allclose(leaf(state.online_params), leaf(state.target_params))
  network = networks.build_network(tiny_model_config(), 3)
  opt = optim.build_optimizer(
      ml_collections.ConfigDict(dict(name='lars', weight_decay=0.0,
                                     trust_coefficient=1e-3, momentum=0.9)),
      optim.learning_rate_schedule(0.1, 10, 0), 0.1)
  copied = ts.init_state(jax.random.key(0), network, opt, IMAGE_SHAPE, True,
                         target_init='copy')
  np.testing.assert_array_equal(leaf(copied.online_params),
                                leaf(copied.target_params))


def test_copied_target_has_its_own_buffers():
  """The trainer replicates init_state's arrays as they are (no host copy)
  and the step donates online and target trees: one buffer in both is
  'Attempt to donate the same buffer twice' at the first step."""
  _, kwargs = _setup('byol')
  state = ts.init_state(jax.random.key(0), kwargs['network'],
                        kwargs['optimizer'], IMAGE_SHAPE, True,
                        target_init='copy')
  state = parallel.replicate(state, parallel.make_mesh(jax.devices()[:1]))
  pointers = lambda tree: [  # noqa: E731
      s.data.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)
      for s in x.addressable_shards]
  online = pointers((state.online_params, state.online_batch_stats))
  target = pointers((state.target_params, state.target_batch_stats))
  assert len(online) == len(target) > 0
  assert not set(online) & set(target)


def test_simsiam_has_no_target_network():
  state, kwargs = _setup('simsiam')
  assert state.target_params is None and state.target_batch_stats is None
  new_state, metrics = _run(jax.devices()[:1], state, kwargs, _batches(2))
  assert new_state.target_params is None
  # Negative cosine lies in [-1, 1].
  assert -1.0 <= float(metrics[-1]['loss']) <= 1.0


def test_metrics_report_schedules_and_collapse():
  state, kwargs = _setup('byol')
  _, metrics = _run(jax.devices()[:1], state, kwargs, _batches(3))
  assert [float(m['lr']) for m in metrics] == pytest.approx([0.0, 0.05, 0.1])
  assert float(metrics[0]['tau']) == pytest.approx(0.9)
  assert float(metrics[0]['collapse/healthy_std']) == pytest.approx(
      1 / np.sqrt(8))
  assert 1.0 <= float(metrics[0]['collapse/effective_rank']) <= 8.0


def test_effective_rank_only_on_its_steps(devices):
  """rank_every=2: the SVD runs on steps 2 and 4 only (NaN on 1 and 3);
  where it runs it equals the every-step value, and nothing else moves."""
  state, kwargs = _setup('byol')
  batches = _batches(4)
  every_state, every = _run(devices[:2], state, kwargs, batches)
  state2, sampled = _run(devices[:2], state, dict(kwargs, rank_every=2),
                         batches)
  ranks = [float(m['collapse/effective_rank']) for m in sampled]
  assert np.isnan(ranks[0]) and np.isnan(ranks[2])
  assert ranks[1] == pytest.approx(
      float(every[1]['collapse/effective_rank']), rel=1e-6)
  assert ranks[3] == pytest.approx(
      float(every[3]['collapse/effective_rank']), rel=1e-6)
  for a, b in zip(every, sampled):
    for k in a:
      if k != 'collapse/effective_rank':
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
  chex.assert_trees_all_close(every_state.online_params, state2.online_params,
                              rtol=1e-6)


@pytest.mark.slow  # bf16 convolutions are emulated on CPU: minutes here.
def test_bfloat16_compute_keeps_state_and_loss_in_float32(devices):
  """Mixed precision: convolutions and matmuls in bf16; params, BN
  statistics, the EMA target, optimizer state and the loss in float32, and
  the loss close to the float32 run's."""
  results = {}
  for dtype in ('float32', 'bfloat16'):
    state, kwargs = _setup('byol', compute_dtype=dtype)
    results[dtype] = _run(devices[:1], state, kwargs, _batches(2))
  state, metrics = results['bfloat16']
  for name in ('online_params', 'online_batch_stats', 'target_params',
               'target_batch_stats', 'opt_state'):
    for leaf in jax.tree.leaves(getattr(state, name)):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32, name
  for m32, m16 in zip(results['float32'][1], metrics):
    assert m16['loss'].dtype == jnp.float32
    np.testing.assert_allclose(m16['loss'], m32['loss'], rtol=0.05)
  assert not np.allclose(metrics[0]['loss'], results['float32'][1][0]['loss'],
                         rtol=1e-7, atol=0)  # bf16 really was used.


def _on_device_setup():
  params = augment.PRESETS['byol_imagenet']  # Every op fires in view 2.
  device_views = dict(view1=params[0], view2=params[1], mean=(0.5,),
                      std=(0.25,))
  crops = [{**b, 'view1': 1 / (1 + np.exp(-b['view1'])),
            'view2': 1 / (1 + np.exp(-b['view2']))} for b in _batches(2)]
  return params, device_views, crops


def test_on_device_views_do_not_depend_on_the_device_count(devices):
  """Each image's draws fold in its global index: 8 shards give the views
  of 1."""
  _, device_views, crops = _on_device_setup()
  views = []
  for mesh in (parallel.make_mesh(devices[:1]), parallel.make_mesh(devices)):
    finish = jax.jit(jax.shard_map(
        lambda b, rng, step: ts._finish_views(b, rng, step, device_views,
                                              parallel.AXIS),
        mesh=mesh, in_specs=(ts.P(parallel.AXIS), ts.P(), ts.P()),
        out_specs=ts.P(parallel.AXIS)))
    views.append(jax.device_get(finish(
        parallel.shard_batch(crops[1], mesh), parallel.replicate(jax.random.key(1), mesh),
        parallel.replicate(jnp.int32(5), mesh))))
  for name in ('view1', 'view2'):
    np.testing.assert_allclose(views[1][name], views[0][name], atol=1e-6)
    assert not np.allclose(views[0][name], (crops[1][name] - 0.5) / 0.25)
  np.testing.assert_array_equal(views[1]['label'], crops[1]['label'])


@pytest.mark.slow  # ~50 s (two train-step compilations); `make test-slow`.
def test_on_device_augmentation_step(devices):
  """augment.on_device: the step finishes the views from the crops with
  draws folded from (rng, step, view, global index), i.e. it equals a step
  fed with those views finished beforehand."""
  state, kwargs = _setup('byol')
  params, device_views, crops = _on_device_setup()
  on_device, _ = _run(devices[:1], state,
                      dict(kwargs, device_views=device_views), crops)
  rng = jax.random.key(1)  # _run's.
  finish = {i: jax.jit(lambda key, x, i=i: device_augment.augment_batch(
      key, x, jnp.arange(GLOBAL_BATCH), params[i], (0.5,), (0.25,)))
            for i in (0, 1)}
  finished = []
  for step, b in enumerate(crops):
    key = jax.random.fold_in(rng, step)
    finished.append({**b, **{name: np.asarray(finish[i](
        jax.random.fold_in(key, i), b[name])) for i, name in enumerate(
            ('view1', 'view2'))}})
  host, _ = _run(devices[:1], state, kwargs, finished)
  # Equal up to float reassociation between the two compiled programs.
  chex.assert_trees_all_close(host.online_params, on_device.online_params,
                              rtol=1e-3, atol=1e-4)
  # And the views really were augmented: not the crops normalised.
  plain = [{**b, 'view1': (b['view1'] - 0.5) / 0.25,
            'view2': (b['view2'] - 0.5) / 0.25} for b in crops]
  unaugmented, _ = _run(devices[:1], state, kwargs, plain)
  kernel = lambda s: s.online_params['encoder']['stem_conv']['kernel']  # noqa: E731
  reassociation = np.abs(kernel(host) - kernel(on_device)).max()
  assert np.abs(kernel(unaugmented) - kernel(on_device)).max() > max(
      10 * reassociation, 1e-6)
