"""Collapse diagnostics on features with known answers."""

import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import diagnostics


def test_effective_rank_identity_and_rank_one():
  assert diagnostics.effective_rank(jnp.eye(16)) == pytest.approx(16, rel=1e-4)
  rank_one = jnp.outer(jnp.arange(1.0, 33.0), jnp.ones(16))
  assert diagnostics.effective_rank(rank_one) == pytest.approx(1.0, abs=1e-3)


def test_normalized_std_healthy_and_collapsed():
  z = np.random.RandomState(0).randn(4096, 64)
  assert diagnostics.normalized_std(z) == pytest.approx(1 / 8, rel=0.02)
  same = jnp.tile(jnp.arange(64.0)[None], (128, 1))
  assert diagnostics.normalized_std(same) == pytest.approx(0.0, abs=1e-6)


def test_mean_offdiagonal_cosine():
  same = jnp.ones((10, 4))
  assert diagnostics.mean_offdiagonal_cosine(same) == pytest.approx(1.0)
  assert diagnostics.mean_offdiagonal_cosine(jnp.eye(5)) == pytest.approx(0.0)
  pair = jnp.array([[1.0, 0.0], [-1.0, 0.0]])
  assert diagnostics.mean_offdiagonal_cosine(pair) == pytest.approx(-1.0)
