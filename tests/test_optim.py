"""Schedules at known steps, the EMA direction, and the LARS masks."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from byol_jax import losses, networks, optim
from conftest import tiny_model_config


def test_learning_rate_warmup_then_cosine():
  peak = optim.scaled_learning_rate(0.2, 4096)  # BYOL: 0.2 x 4096 / 256.
  assert peak == pytest.approx(3.2)
  lr = optim.learning_rate_schedule(peak, total_steps=1000, warmup_steps=100)
  assert lr(0) == pytest.approx(0.0)
  assert lr(50) == pytest.approx(1.6)                 # linear from 0
  assert lr(100) == pytest.approx(3.2)                # end of warm-up
  assert lr(550) == pytest.approx(1.6, rel=1e-5)      # half-way down the cosine
  assert lr(1000) == pytest.approx(0.0, abs=1e-7)     # last step


def test_learning_rate_without_warmup_and_unscaled():
  assert optim.scaled_learning_rate(0.05, 512, 'none') == 0.05
  lr = optim.learning_rate_schedule(0.1, total_steps=10, warmup_steps=0)
  assert lr(0) == pytest.approx(0.1)
  assert lr(5) == pytest.approx(0.05)
  assert lr(10) == pytest.approx(0.0, abs=1e-8)
  with pytest.raises(ValueError, match='lr_scaling'):
    optim.scaled_learning_rate(0.1, 256, 'sqrt')


def test_tau_schedule_cosine_from_base_to_one():
  tau = optim.tau_schedule(0.996, total_steps=1000)
  assert tau(0) == pytest.approx(0.996)
  assert tau(500) == pytest.approx(0.998)
  assert tau(1000) == pytest.approx(1.0)
  # tau_base 0 and 1 (Table 5a's extremes) are well defined.
  assert optim.tau_schedule(1.0, 10)(3) == pytest.approx(1.0)
  assert optim.tau_schedule(0.0, 10)(0) == pytest.approx(0.0)
  # Table 5a's "stop gradient of online": tau = tau_base = 0 throughout,
  # where the cosine schedule would have reached 0.5 half-way.
  assert optim.tau_schedule(0.0, 10)(5) == pytest.approx(0.5)
  constant = optim.tau_schedule(0.0, 10, 'constant')
  assert [float(constant(k)) for k in (0, 5, 10)] == [0.0, 0.0, 0.0]
  with pytest.raises(ValueError, match="'linear'"):
    optim.tau_schedule(0.9, 10, 'linear')


def test_ema_moves_target_toward_online_by_one_minus_tau():
  online = {'w': jnp.array([1.0, 2.0])}
  target = {'w': jnp.array([0.0, 0.0])}
  tau = 0.9
  new = optax.incremental_update(new_tensors=online, old_tensors=target,
                                 step_size=1.0 - tau)
  # xi <- tau xi + (1 - tau) theta: 10% of the way toward online.
  chex.assert_trees_all_close(new['w'], jnp.array([0.1, 0.2]))


def _params():
  net = networks.build_network(tiny_model_config(), num_classes=3)
  return jax.eval_shape(lambda: net.init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False))['params']


def test_lars_masks_name_exactly_biases_and_batchnorm_parameters():
  params = _params()
  mask = optim.decay_mask(params)
  flat = {jax.tree_util.keystr(p): v for p, v in
          jax.tree_util.tree_leaves_with_path(mask)}
  excluded = sorted(k for k, v in flat.items() if not v)
  included = sorted(k for k, v in flat.items() if v)
  assert all(k.endswith("['bias']") or k.endswith("['scale']")
             for k in excluded)
  assert all(k.endswith("['kernel']") for k in included)
  # Every BatchNorm's scale/bias and every Dense bias is excluded.
  bn = [k for k in flat if "_bn']" in k or "['bn" in k or "BatchNorm" in k]
  assert bn and all(not flat[k] for k in bn)
  assert "['probe']['bias']" in excluded
  assert "['projector']['linear1']['kernel']" in included


def test_lars_update_skips_decay_and_trust_ratio_on_masked_leaves():
  params = {'dense': {'kernel': jnp.full((2, 2), 2.0), 'bias': jnp.ones(2)}}
  grads = jax.tree.map(jnp.ones_like, params)
  cfg = ml_collections.ConfigDict(dict(name='lars', weight_decay=0.1,
                                       trust_coefficient=1e-3, momentum=0.9))
  opt = optim.build_optimizer(cfg, optax.constant_schedule(1.0), 1.0)
  updates, _ = opt.update(grads, opt.init(params), params)
  # Bias: plain SGD step -lr * g.
  chex.assert_trees_all_close(updates['dense']['bias'], -jnp.ones(2))
  # Kernel: g + wd * w = 1.2, trust ratio 1e-3 * |w| / |g + wd w| = 1e-3*2/1.2.
  expected = -1.2 * (1e-3 * 4.0 / (1.2 * 2.0))
  chex.assert_trees_all_close(updates['dense']['kernel'],
                              jnp.full((2, 2), expected), rtol=1e-5)


def test_simsiam_predictor_keeps_a_fixed_learning_rate():
  cfg = ml_collections.ConfigDict(dict(
      name='sgd', weight_decay=0.0, momentum=0.0, fixed_predictor_lr=True))
  schedule = optim.learning_rate_schedule(0.5, total_steps=10, warmup_steps=0)
  opt = optim.build_optimizer(cfg, schedule, peak_lr=0.5)
  params = {'predictor': {'w': jnp.ones(1)}, 'encoder': {'w': jnp.ones(1)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = opt.init(params)
  for _ in range(6):  # Step 5 of 10: the cosine is at half its peak.
    updates, state = opt.update(grads, state, params)
  np.testing.assert_allclose(updates['predictor']['w'], [-0.5], rtol=1e-6)
  np.testing.assert_allclose(updates['encoder']['w'], [-0.25], rtol=1e-5)


@pytest.mark.parametrize('name', ['lars', 'sgd'])
def test_predictor_lr_multiplier_scales_only_the_predictor(name):
  """LARS's step is lr * eta * |w| / |g| * g, SGD's lr * g: both linear in
  the LR, so the predictor's update is exactly 10x the encoder's (same w, g),
  at every step of the schedule."""
  cfg = ml_collections.ConfigDict(dict(
      name=name, weight_decay=0.0, momentum=0.0, trust_coefficient=1e-3,
      predictor_lr_multiplier=10.0))
  schedule = optim.learning_rate_schedule(0.5, total_steps=10, warmup_steps=0)
  opt = optim.build_optimizer(cfg, schedule, peak_lr=0.5)
  params = {'predictor': {'w': jnp.full((3, 2), 2.0)},
            'encoder': {'w': jnp.full((3, 2), 2.0)}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = opt.init(params)
  for _ in range(6):  # Step 5 of 10: the cosine is at half its peak.
    updates, state = opt.update(grads, state, params)
  base = -0.25 * (1e-3 * 2.0 if name == 'lars' else 1.0)
  np.testing.assert_allclose(updates['encoder']['w'], base, rtol=1e-5)
  np.testing.assert_allclose(updates['predictor']['w'], 10 * base, rtol=1e-5)


def test_unknown_optimizer_is_refused():
  with pytest.raises(ValueError, match="'lars', 'sgd' or 'adamw'"):
    optim.build_optimizer(ml_collections.ConfigDict(dict(name='adam')),
                          optax.constant_schedule(1.0), 1.0)


def test_probe_has_its_own_optimizer():
  """The probe steps by SGD-Nesterov at its own LR (first step: -lr (1 + m)
  g); the network's leaves get LARS, with its tiny trust-ratio step."""
  net = networks.build_network(tiny_model_config(), num_classes=3)
  params = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                    train=False)['params']
  labels = optim.probe_labels(params)
  assert labels['probe'] == {'kernel': 'probe', 'bias': 'probe'}
  assert set(jax.tree.leaves(
      {k: v for k, v in labels.items() if k != 'probe'})) == {'ssl'}
  lars = ml_collections.ConfigDict(dict(name='lars', weight_decay=0.0,
                                        trust_coefficient=1e-3, momentum=0.9))
  opt = optim.with_probe_optimizer(
      optim.build_optimizer(lars, optax.constant_schedule(1.0), 1.0),
      ml_collections.ConfigDict(dict(learning_rate=0.1, momentum=0.9)))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = opt.update(grads, opt.init(params), params)
  chex.assert_trees_all_close(updates['probe'], jax.tree.map(
      lambda g: -0.1 * 1.9 * g, grads['probe']))
  kernel = updates['projector']['linear1']['kernel']
  w = params['projector']['linear1']['kernel']
  chex.assert_trees_all_close(
      kernel, -1e-3 * jnp.linalg.norm(w) / jnp.linalg.norm(jnp.ones_like(w))
      * jnp.ones_like(w), rtol=1e-5)


def test_probe_learns_linearly_separable_features():
  """Its optimizer fits a linear probe to ~100% on separable features."""
  rng = np.random.RandomState(0)
  centers = rng.normal(size=(4, 16)) * 3
  labels = rng.randint(0, 4, 512)
  feats = jnp.asarray(centers[labels] + rng.normal(size=(512, 16)),
                      jnp.float32)
  params = {'probe': {'kernel': jnp.zeros((16, 4)), 'bias': jnp.zeros(4)}}
  opt = optim.with_probe_optimizer(
      optax.sgd(0.0), ml_collections.ConfigDict(dict(learning_rate=0.1,
                                                     momentum=0.9)))
  state = opt.init(params)

  def loss(p):
    logits = feats @ p['probe']['kernel'] + p['probe']['bias']
    return losses.probe_loss(logits, jnp.asarray(labels))

  @jax.jit
  def step(p, s):
    updates, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(100):
    params, state = step(params, state)
  logits = feats @ params['probe']['kernel'] + params['probe']['bias']
  assert float(jnp.mean(jnp.argmax(logits, -1) == labels)) >= 0.99


# --- Update order under a schedule, against numpy transcriptions ----------

def _trajectory_params():
  """Leaves of each kind the masks meet: decayed + adapted kernels (one at
  zero: trust ratio 1), excluded biases and BatchNorm scale / bias."""
  rng = np.random.RandomState(0)
  return {
      'encoder': {'Conv_0': {'kernel': rng.randn(3, 3, 2, 4)},
                  'zero': {'kernel': np.zeros((4, 3))},
                  'BatchNorm_0': {'scale': 1 + 0.1 * rng.randn(4),
                                  'bias': 0.1 * rng.randn(4)}},
      'projector': {'linear1': {'kernel': rng.randn(4, 5),
                                'bias': rng.randn(5)}}}


def _grad(params, coeffs):
  """Gradient of sum(c w^2 / 2 + d w): depends on the weights, so the
  trajectory depends on every earlier update."""
  return jax.tree.map(lambda w, cd: cd[0] * w + cd[1], params, coeffs)


def _run_optax(opt, params, coeffs, steps):
  params = jax.tree.map(jnp.asarray, params)
  state = opt.init(params)
  out = []
  for _ in range(steps):
    updates, state = opt.update(_grad(params, coeffs), state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out


def _np_schedule(t, peak, warmup, total):
  """Linear warm-up from 0, then cosine to 0 (BYOL appendix C)."""
  if t < warmup:
    return peak * t / warmup
  return peak * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (total - warmup)))


def _np_official_lars(params, coeffs, steps, lr, wd, momentum, eta):
  """byol/utils/optimizers.py transcribed: u = g + wd w; u *= eta |w| / |u|
  (1 if either norm is 0); both skipped for biases and BatchNorm ('b' /
  'norm' in the Haiku path: our 'bias' / 'scale'); m = momentum m + u;
  w -= lr_t m."""
  flat, tree = jax.tree_util.tree_flatten_with_path(params)
  names = [jax.tree_util.keystr(p) for p, _ in flat]
  w = [np.array(v, np.float64) for _, v in flat]
  c = jax.tree.leaves(coeffs, is_leaf=lambda x: isinstance(x, tuple))
  m = [np.zeros_like(v) for v in w]
  out = []
  for t in range(steps):
    for i, name in enumerate(names):
      g = c[i][0] * w[i] + c[i][1]
      excluded = name.endswith("['bias']") or name.endswith("['scale']")
      u = g if excluded else g + wd * w[i]
      if not excluded:
        pn, un = np.linalg.norm(w[i]), np.linalg.norm(u)
        u = u * (eta * pn / un if pn > 0 and un > 0 else 1.0)
      m[i] = momentum * m[i] + u
      w[i] = w[i] - lr(t) * m[i]
    out.append(jax.tree_util.tree_unflatten(tree, [v.copy() for v in w]))
  return out


def _np_pytorch_sgd(params, coeffs, steps, lr, wd, momentum):
  """torch.optim.SGD (dampening 0, no Nesterov) transcribed: d = g + wd w;
  buf = d at the first step, then momentum buf + d; w -= lr_t buf."""
  w = jax.tree.map(lambda v: np.array(v, np.float64), params)
  leaves, tree = jax.tree.flatten(w)
  c = jax.tree.leaves(coeffs, is_leaf=lambda x: isinstance(x, tuple))
  buf = [None] * len(leaves)
  out = []
  for t in range(steps):
    for i, v in enumerate(leaves):
      d = c[i][0] * v + c[i][1] + wd * v
      buf[i] = d if buf[i] is None else momentum * buf[i] + d
      leaves[i] = v - lr(t) * buf[i]
    out.append(jax.tree.unflatten(tree, list(leaves)))
  return out


def _coeffs(params):
  rng = np.random.RandomState(1)
  return jax.tree.map(lambda w: (rng.uniform(0.5, 2.0), rng.randn(*w.shape)),
                      params)


def _max_rel(a, b):
  return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-12))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('order', ['official', 'optax'])
def test_lars_trajectory_is_the_official_update_order(order):
  """Six steps under a fast warm-up + cosine schedule equal the official
  formulas (momentum on the unscaled update, then -lr_t) to 1e-6 relative,
  masks included; optax.lars's order (LR before the momentum) does not."""
  params = _trajectory_params()
  coeffs = _coeffs(params)
  peak, warmup, total = 0.8, 2, 6
  cfg = ml_collections.ConfigDict(dict(
      name='lars', weight_decay=0.05, momentum=0.9, trust_coefficient=0.1,
      lars_order=order))
  ours = _run_optax(optim.build_optimizer(
      cfg, optim.learning_rate_schedule(peak, total, warmup), peak),
      params, coeffs, total)
  ref = _np_official_lars(params, coeffs, total,
                          lambda t: _np_schedule(t, peak, warmup, total),
                          wd=0.05, momentum=0.9, eta=0.1)
  errors = [_max_rel(ours[t], ref[t]) for t in range(total)]
  if order == 'official':
    assert max(errors) < 1e-6, errors
  else:
    assert max(errors) > 0.05, errors


def test_simsiam_sgd_trajectory_is_pytorch_sgd():
  """SimSiam's SGD (coupled decay, momentum, then the LR) equals
  torch.optim.SGD's formulas under a cosine schedule."""
  params = _trajectory_params()
  coeffs = _coeffs(params)
  peak, total = 0.3, 6
  cfg = ml_collections.ConfigDict(dict(name='sgd', weight_decay=0.01,
                                       momentum=0.9, nesterov=False))
  ours = _run_optax(optim.build_optimizer(
      cfg, optim.learning_rate_schedule(peak, total, 0), peak),
      params, coeffs, total)
  ref = _np_pytorch_sgd(params, coeffs, total,
                        lambda t: _np_schedule(t, peak, 0, total),
                        wd=0.01, momentum=0.9)
  errors = [_max_rel(ours[t], ref[t]) for t in range(total)]
  assert max(errors) < 1e-6, errors
