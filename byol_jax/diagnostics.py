"""Collapse diagnostics, computed on device inside the train step.

All take a (N, D) batch of representations and return scalars; none syncs
with the host.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from byol_jax import losses

# The std diagnostic below this fraction of its healthy value 1/sqrt(D) is
# reported as collapse by the train loop.
COLLAPSE_STD_FRACTION = 0.1

# Metrics the train step computes on some steps only (NaN on the others);
# a logging interval's mean is over the steps that computed them.
SAMPLED_METRICS = ('collapse/effective_rank',)


def normalized_std(z: jax.Array) -> jax.Array:
  """Std over the batch of l2-normalised z, averaged over dimensions.

  About 1/sqrt(D) for well-spread unit vectors; 0 when every row is the same
  (SimSiam, Sec. 4.1).
  """
  return jnp.mean(jnp.std(losses.l2_normalize(z), axis=0))


def effective_rank(z: jax.Array, eps: float = 1e-7) -> jax.Array:
  """exp(entropy(s / sum s)), s the singular values of z (RankMe).

  Equals D for features spread evenly over D orthogonal directions, 1 for
  rank-one features.
  """
  # An SVD rather than eigenvalues of z^T z: in float32 the Gram matrix's
  # rounding noise, square-rooted, would inflate the rank of degenerate z.
  s = jnp.linalg.svd(z.astype(jnp.float32), compute_uv=False)
  p = s / (jnp.sum(s) + eps) + eps
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


def mean_offdiagonal_cosine(z: jax.Array) -> jax.Array:
  """Mean cosine similarity between different rows (1 when collapsed)."""
  zn = losses.l2_normalize(z)
  n = z.shape[0]
  sims = zn @ zn.T
  return (jnp.sum(sims) - jnp.trace(sims)) / (n * (n - 1))


def collapse_metrics(z: jax.Array, rank_due: Any = True
                     ) -> dict[str, jax.Array]:
  """The collapse metrics of z; the effective rank only where the boolean
  scalar `rank_due` is True (NaN elsewhere).

  The rank is sampled because its SVD is the one costly metric: on CPU it is
  a LAPACK call whose OpenBLAS worker threads keep spinning afterwards,
  against XLA's threads, for the rest of the step -- every step, that cost
  SimSiam's demo step 1.3-1.7x (`benchmarks/train_step.py --cases=demo
  --diagnostics=on,every,off`).
  """
  # full_like: NaN typed as z is (also varying over a shard_map axis).
  rank = jax.lax.cond(rank_due, effective_rank,
                      lambda z: jnp.full_like(z, jnp.nan, jnp.float32, ()), z)
  return {
      'collapse/normalized_std': normalized_std(z),
      'collapse/healthy_std': jnp.asarray(1.0 / jnp.sqrt(z.shape[-1])),
      'collapse/effective_rank': rank,
      'collapse/mean_offdiag_cosine': mean_offdiagonal_cosine(z),
  }
