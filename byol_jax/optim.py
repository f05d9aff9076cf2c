"""Schedules (learning rate, EMA decay tau) and optimizers (LARS, SGD)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Leaf names of flax parameters excluded from weight decay and the LARS trust
# ratio: biases (Dense/BatchNorm 'bias') and BatchNorm scales (BYOL, 3.2).
_NO_DECAY_LEAVES = ('bias', 'scale')


def scaled_learning_rate(base_lr: float, batch_size: int,
                         scaling: str = 'linear') -> float:
  """Peak LR: base_lr x batch / 256 ('linear', BYOL/SimSiam), or base_lr ('none')."""
  if scaling == 'linear':
    return base_lr * batch_size / 256
  if scaling == 'none':
    return base_lr
  raise ValueError(f"lr_scaling must be 'linear' or 'none', got {scaling!r}")


def learning_rate_schedule(peak_lr: float, total_steps: int,
                           warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `peak_lr`, then cosine decay to 0 at `total_steps`."""
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(peak_lr, total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=0.0)


def tau_schedule(tau_base: float, total_steps: int,
                 kind: str = 'cosine') -> optax.Schedule:
  """BYOL's EMA decay: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2.

  kind='constant' keeps tau_k = tau_base, as Table 5a's "stop gradient of
  online" row (tau = tau_base = 0 throughout; the cosine would raise it to 1).
  """
  if kind == 'constant':
    return lambda step: jnp.full((), tau_base, jnp.float32)
  if kind != 'cosine':
    raise ValueError(f"tau schedule {kind!r}: use 'cosine' or 'constant'.")

  def schedule(step):
    progress = jnp.minimum(step, total_steps) / total_steps
    return 1.0 - (1.0 - tau_base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0
  return schedule


def decay_mask(params):
  """True for leaves that get weight decay and trust-ratio adaptation."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) not in _NO_DECAY_LEAVES,
      params)


def predictor_labels(params):
  """'predictor' for the SimSiam predictor's leaves, 'rest' otherwise."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'predictor' if any(
          getattr(k, 'key', None) == 'predictor' for k in path) else 'rest',
      params)


def probe_labels(params):
  """'probe' for the online linear probe's leaves, 'ssl' otherwise."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: 'probe' if getattr(path[0], 'key', None) == 'probe'
      else 'ssl', params)


def with_probe_optimizer(ssl_optimizer: optax.GradientTransformation,
                         probe_config) -> optax.GradientTransformation:
  """`ssl_optimizer` for the network, and the probe's own optimizer (SGD with
  Nesterov momentum at a constant LR, no weight decay) for its classifier."""
  probe = optax.sgd(probe_config.learning_rate,
                    momentum=probe_config.momentum, nesterov=True)
  return optax.multi_transform({'ssl': ssl_optimizer, 'probe': probe},
                               probe_labels)


LARS_ORDERS = ('official', 'optax')


def lars(learning_rate: optax.ScalarOrSchedule, weight_decay: float,
         momentum: float = 0.9, trust_coefficient: float = 1e-3,
         order: str = 'official') -> optax.GradientTransformation:
  """LARS (You et al. 2017) as BYOL's official code runs it
  (byol/utils/optimizers.py), built from optax transformations:

    u_t = g_t + wd * w_t                       (add_decayed_weights, masked)
    u_t *= eta * ||w_t|| / ||u_t||, 1 if either norm is 0
                                               (scale_by_trust_ratio, masked)
    m_t = momentum * m_{t-1} + u_t             (trace)
    w_{t+1} = w_t - lr_t * m_t                 (scale_by_learning_rate)

  Biases and BatchNorm parameters are masked out of both the decay and the
  trust ratio (`decay_mask`; the official `exclude_bias_and_norm`). The
  learning rate multiplies the momentum trace, so under warm-up and cosine
  decay each step moves by the current LR times the accumulated updates.

  order='optax' is `optax.lars` (the LR scales each update before the trace:
  the trace then carries past learning rates; the same only at a constant
  LR): kept to resume checkpoints written before the official order became
  the default, whose optimizer state has that layout.
  """
  if order == 'optax':
    return optax.lars(
        learning_rate=learning_rate, weight_decay=weight_decay,
        weight_decay_mask=decay_mask, trust_coefficient=trust_coefficient,
        eps=0.0, trust_ratio_mask=decay_mask, momentum=momentum)
  if order != 'official':
    raise ValueError(f'lars order {order!r}: use one of {LARS_ORDERS}.')
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      optax.masked(optax.scale_by_trust_ratio(
          trust_coefficient=trust_coefficient), decay_mask),
      optax.trace(decay=momentum),
      optax.scale_by_learning_rate(learning_rate))


def build_optimizer(opt_config, lr_schedule: optax.Schedule,
                    peak_lr: float) -> optax.GradientTransformation:
  """The network's optimizer named by `config.optimizer.name`.

  'lars' (BYOL): `lars` above, the official update order (momentum before
    the learning rate), momentum 0.9, trust coefficient 1e-3, biases and
    BatchNorm parameters masked out of weight decay and trust ratio.
  'sgd' (SimSiam): PyTorch's SGD: coupled weight decay, then the momentum
    trace, then the learning rate (g + wd w -> buf = m buf + . -> w -= lr
    buf), as SimSiam's official code (torch.optim.SGD) runs it.
  'adamw': AdamW, decay masked like LARS (small-scale CPU runs).

  The predictor's LR, for any of them: the schedule times
  `predictor_lr_multiplier`, or, with `fixed_predictor_lr` (SimSiam), the
  peak LR times the multiplier at every step. A predictor that tracks its
  optimum faster keeps BYOL away from collapse (BYOL section 3.2; Tian et
  al. 2021 "Understanding self-supervised learning dynamics without
  contrastive pairs").
  """
  name = opt_config.name
  if name == 'lars':
    def make(lr):
      return lars(lr, weight_decay=opt_config.weight_decay,
                  momentum=opt_config.momentum,
                  trust_coefficient=opt_config.trust_coefficient,
                  order=opt_config.get('lars_order', 'official'))
  elif name == 'sgd':
    def make(lr):
      return optax.chain(
          optax.add_decayed_weights(opt_config.weight_decay),
          optax.sgd(lr, momentum=opt_config.momentum,
                    nesterov=opt_config.get('nesterov', False)))
  elif name == 'adamw':
    def make(lr):
      return optax.adamw(lr, weight_decay=opt_config.weight_decay,
                         mask=decay_mask)
  else:
    raise ValueError(
        f"optimizer.name must be 'lars', 'sgd' or 'adamw', got {name!r}")
  multiplier = opt_config.get('predictor_lr_multiplier', 1.0)
  fixed = opt_config.get('fixed_predictor_lr', False)
  if multiplier == 1.0 and not fixed:
    return make(lr_schedule)
  if fixed:
    predictor_lr = peak_lr * multiplier
  else:
    predictor_lr = lambda count: multiplier * lr_schedule(count)
  return optax.multi_transform(
      {'rest': make(lr_schedule), 'predictor': make(predictor_lr)},
      predictor_labels)
