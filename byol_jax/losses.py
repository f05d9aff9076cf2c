"""Losses of non-contrastive (and contrastive) self-supervised learning.

Pure functions of arrays. Inputs are (B, D) batches of one device's shard;
where negatives are needed, `axis_name` gathers them from every device so the
result equals the single-device loss on the global batch.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax


def l2_normalize(x: jax.Array, axis: int = -1,
                 eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, sqrt(eps)); the official BYOL code clamps ||x||^2 at 1e-12."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps))


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise cosine similarity of (B, D) arrays -> (B,)."""
  return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def regression_loss(prediction: jax.Array, target: jax.Array,
                    stop_gradient: bool = True) -> jax.Array:
  """BYOL per-direction loss ||q/|q| - z'/|z'|||^2 = 2 - 2 cos(q, z'), (B,).

  The target is wrapped in stop_gradient: no gradient reaches its branch
  (`stop_gradient=False` only for SimCLR, whose two branches are one network).
  """
  if stop_gradient:
    target = jax.lax.stop_gradient(target)
  return 2.0 - 2.0 * cosine_similarity(prediction, target)


def negative_cosine(prediction: jax.Array, target: jax.Array,
                    stop_gradient: bool = True) -> jax.Array:
  """SimSiam D(p, z) = -cos(p, stop_grad(z)), (B,)."""
  if stop_gradient:
    target = jax.lax.stop_gradient(target)
  return -cosine_similarity(prediction, target)


def simsiam_loss(p1, p2, z1, z2, stop_gradient: bool = True) -> jax.Array:
  """SimSiam: D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2, mean over the batch.

  `stop_gradient=False` is the paper's collapsing ablation (Sec. 4.1).
  """
  return jnp.mean(negative_cosine(p1, z2, stop_gradient) / 2
                  + negative_cosine(p2, z1, stop_gradient) / 2)


def _log_sum_exp_negatives(online, target_same, target_other, alpha,
                           axis_name, stop_gradient=True):
  """ln(sum_{j != i} e^{S(v_i, v_j)/a} + sum_j e^{S(v_i, v'_j)/a}) per row i.

  `online` holds phi(v_i) of this shard; the target arrays psi(v_j), psi(v'_j)
  are gathered over `axis_name` so every row sees the global batch.
  """
  if stop_gradient:
    target_same = jax.lax.stop_gradient(target_same)
    target_other = jax.lax.stop_gradient(target_other)
  online = l2_normalize(online)
  target_same = l2_normalize(target_same)
  target_other = l2_normalize(target_other)
  local_b = online.shape[0]
  offset = 0
  if axis_name is not None:
    target_same = jax.lax.all_gather(target_same, axis_name, tiled=True)
    target_other = jax.lax.all_gather(target_other, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * local_b
  logits_same = online @ target_same.T / alpha      # (b, B): S(v_i, v_j)
  logits_other = online @ target_other.T / alpha    # (b, B): S(v_i, v'_j)
  self_mask = (jnp.arange(local_b)[:, None] + offset
               == jnp.arange(target_same.shape[0])[None, :])
  logits_same = jnp.where(self_mask, -jnp.inf, logits_same)
  return jax.nn.logsumexp(
      jnp.concatenate([logits_same, logits_other], axis=1), axis=1)


def infonce_alpha_beta_loss(online_1: jax.Array, online_2: jax.Array,
                            target_1: jax.Array, target_2: jax.Array,
                            alpha: float = 0.1, beta: float = 0.0,
                            axis_name: Optional[str] = None,
                            stop_gradient: bool = True) -> jax.Array:
  """Symmetrised loss of BYOL's InfoNCE_{alpha,beta} family (BYOL Table 5b).

  Per direction (v -> v'), with S = cosine(phi(v_i), psi(v'_i)):
    mean_i [ 2 - 2 S(v_i, v'_i)
             + beta * 2 alpha * ln( sum_{j!=i} e^{S(v_i,v_j)/alpha}
                                    + sum_j e^{S(v_i,v'_j)/alpha} ) ]
  i.e. 2 - InfoNCE_{alpha,beta}, summed over both directions. phi is the online
  prediction (or projection without predictor), psi the target projection (or
  the online projection without target network); psi gets no gradient unless
  `stop_gradient=False` (SimCLR: psi is the online network, trained through
  both views).

  beta = 0 gives the BYOL loss L(v, v') + L(v', v) exactly; beta = 1 with no
  predictor and no target gives SimCLR's NT-Xent (times 2 alpha, plus a
  constant) with temperature alpha.

  Args:
    online_1, online_2: phi of view 1 and view 2, (b, D).
    target_1, target_2: psi of view 1 and view 2, (b, D).
    alpha: temperature of the negatives' term.
    beta: weight of the negatives' term; a Python float (0 skips it).
    axis_name: named device axis to gather negatives over (global batch).
    stop_gradient: wrap psi in stop_gradient (every row but SimCLR's).

  Returns:
    Scalar mean over this shard (average over devices for the global mean).
  """
  loss = (regression_loss(online_1, target_2, stop_gradient)
          + regression_loss(online_2, target_1, stop_gradient))
  if beta:
    lse_12 = _log_sum_exp_negatives(online_1, target_1, target_2, alpha,
                                    axis_name, stop_gradient)
    lse_21 = _log_sum_exp_negatives(online_2, target_2, target_1, alpha,
                                    axis_name, stop_gradient)
    loss = loss + beta * 2.0 * alpha * (lse_12 + lse_21)
  return jnp.mean(loss)


def byol_loss(online_1, online_2, target_1, target_2) -> jax.Array:
  """BYOL: L(v, v') + L(v', v), L = 2 - 2 cos(q(z_online(v)), sg(z_target(v')))."""
  return infonce_alpha_beta_loss(online_1, online_2, target_1, target_2,
                                 beta=0.0)


def probe_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy of the online linear probe, mean over the batch."""
  return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels))
