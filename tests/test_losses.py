"""Losses on hand-computed inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import losses

E1 = jnp.array([[1.0, 0.0, 0.0]])
E2 = jnp.array([[0.0, 1.0, 0.0]])


@pytest.mark.parametrize('pred,target,expected', [
    (E1, E1, 0.0),            # identical: cos = 1
    (E1, E2, 2.0),            # orthogonal: cos = 0
    (E1, -E1, 4.0),           # opposite: cos = -1
    (jnp.array([[1.0, 1.0]]), jnp.array([[1.0, 0.0]]), 2.0 - np.sqrt(2.0)),
])
def test_regression_loss_values(pred, target, expected):
  chex.assert_trees_all_close(losses.regression_loss(pred, target),
                              jnp.array([expected]), atol=1e-6)


@pytest.mark.parametrize('pred,target,expected', [
    (E1, E1, -1.0), (E1, E2, 0.0), (E1, -E1, 1.0)])
def test_negative_cosine_values(pred, target, expected):
  chex.assert_trees_all_close(losses.negative_cosine(pred, target),
                              jnp.array([expected]), atol=1e-6)


def test_losses_invariant_to_input_scale():
  rng = np.random.RandomState(0)
  p, z = rng.randn(4, 5), rng.randn(4, 5)
  scale = np.array([[0.01], [3.0], [100.0], [7.0]])
  chex.assert_trees_all_close(losses.regression_loss(p * scale, z / scale),
                              losses.regression_loss(p, z), rtol=1e-5)
  chex.assert_trees_all_close(losses.negative_cosine(p * 5.0, z * 0.2),
                              losses.negative_cosine(p, z), rtol=1e-5)


def test_no_gradient_reaches_the_target_branch():
  rng = np.random.RandomState(1)
  p1, p2, z1, z2 = (jnp.asarray(rng.randn(4, 6)) for _ in range(4))
  g_byol = jax.grad(losses.byol_loss, argnums=(2, 3))(p1, p2, z1, z2)
  g_simsiam = jax.grad(losses.simsiam_loss, argnums=(2, 3))(p1, p2, z1, z2)
  g_infonce = jax.grad(
      lambda *a: losses.infonce_alpha_beta_loss(*a, alpha=0.5, beta=1.0),
      argnums=(2, 3))(p1, p2, z1, z2)
  for g in (*g_byol, *g_simsiam, *g_infonce):
    np.testing.assert_array_equal(g, 0.0)
  # ...while the online branch does get gradient.
  assert np.abs(jax.grad(losses.byol_loss)(p1, p2, z1, z2)).sum() > 0


def test_simsiam_without_stop_gradient_sends_gradient_to_both_branches():
  rng = np.random.RandomState(2)
  p1, p2, z1, z2 = (jnp.asarray(rng.randn(3, 4)) for _ in range(4))
  g = jax.grad(lambda z: losses.simsiam_loss(p1, p2, z, z2,
                                             stop_gradient=False))(z1)
  assert np.abs(g).sum() > 0


def test_simclr_row_sends_gradient_through_both_views():
  """stop_gradient=False (SimCLR: psi is the online network itself): the
  gradient w.r.t. psi is the reference loss's, not zero."""
  rng = np.random.RandomState(3)
  o1, o2, t1, t2 = (jnp.asarray(rng.randn(4, 5)) for _ in range(4))

  def loss(t):
    return losses.infonce_alpha_beta_loss(o1, o2, t, t2, alpha=0.5, beta=1.0,
                                          stop_gradient=False)

  g = jax.grad(loss)(t1)
  assert np.abs(g).sum() > 0
  # Same value as with the stop-gradient: only the gradient changes.
  chex.assert_trees_all_close(
      loss(t1), losses.infonce_alpha_beta_loss(o1, o2, t1, t2, alpha=0.5,
                                               beta=1.0), rtol=1e-6)
  # And it equals the finite difference of the loss.
  d = jnp.zeros_like(t1).at[1, 2].set(1e-3)
  fd = (loss(t1 + d) - loss(t1 - d)) / 2e-3
  np.testing.assert_allclose(g[1, 2], fd, rtol=2e-2)


def test_byol_loss_is_symmetrised_mean_of_both_directions():
  p1, p2 = jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([[1.0, 0.0],
                                                             [1.0, 0.0]])
  z1, z2 = jnp.array([[0.0, 1.0], [0.0, 1.0]]), jnp.array([[1.0, 0.0],
                                                             [0.0, -1.0]])
  # Direction 1: p1 vs z2: cos = [1, -1] -> [0, 4]; direction 2: p2 vs z1:
  # cos = [0, 0] -> [2, 2]. Mean over batch of the sum: (0+2 + 4+2) / 2 = 4.
  chex.assert_trees_all_close(losses.byol_loss(p1, p2, z1, z2), 4.0)


def _infonce_reference(o1, o2, t1, t2, alpha, beta):
  """Direct transcription of BYOL appendix eq. for InfoNCE_{alpha,beta}."""
  def cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  total = 0.0
  for on, t_same, t_other in ((o1, t1, t2), (o2, t2, t1)):
    b = len(on)
    for i in range(b):
      neg = sum(np.exp(cos(on[i], t_same[j]) / alpha) for j in range(b)
                if j != i)
      neg += sum(np.exp(cos(on[i], t_other[j]) / alpha) for j in range(b))
      total += (2 - 2 * cos(on[i], t_other[i])
                + beta * 2 * alpha * np.log(neg)) / b
  return total


@pytest.mark.parametrize('beta', [0.0, 0.5, 1.0])
def test_infonce_alpha_beta_matches_the_papers_formula(beta):
  rng = np.random.RandomState(3)
  arrays = [rng.randn(5, 4) for _ in range(4)]
  got = losses.infonce_alpha_beta_loss(*map(jnp.asarray, arrays), alpha=0.3,
                                       beta=beta)
  np.testing.assert_allclose(got, _infonce_reference(*arrays, 0.3, beta),
                             rtol=1e-5)


def test_infonce_beta_zero_is_byol():
  rng = np.random.RandomState(4)
  a = [jnp.asarray(rng.randn(6, 3)) for _ in range(4)]
  chex.assert_trees_all_close(
      losses.infonce_alpha_beta_loss(*a, alpha=0.1, beta=0.0),
      losses.byol_loss(*a))


def test_infonce_gathers_negatives_across_devices(devices):
  """Sharded over 8 devices, the loss equals the single-device global loss."""
  rng = np.random.RandomState(5)
  a = [rng.randn(16, 4).astype(np.float32) for _ in range(4)]
  mesh = jax.sharding.Mesh(np.asarray(devices), ('batch',))
  P = jax.sharding.PartitionSpec
  sharded = jax.jit(jax.shard_map(
      lambda *x: jax.lax.pmean(losses.infonce_alpha_beta_loss(
          *x, alpha=0.2, beta=1.0, axis_name='batch'), 'batch'),
      mesh=mesh, in_specs=(P('batch'),) * 4, out_specs=P()))
  np.testing.assert_allclose(
      sharded(*a), losses.infonce_alpha_beta_loss(*a, alpha=0.2, beta=1.0),
      rtol=1e-5)


def test_probe_loss_value():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  chex.assert_trees_all_close(losses.probe_loss(logits, jnp.array([0])),
                              -np.log(0.5), rtol=1e-6)
