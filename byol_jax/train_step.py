"""Train state and the pure, device-mapped BYOL / SimSiam train step.

Mapping: `jax.shard_map` under `jax.jit` over a 1-D mesh of devices with the
named axis 'batch' -- what `jax.pmap` itself lowers to since JAX 0.8, with the
same semantics (per-device code, `lax.pmean` over the named axis) and global
`jax.Array`s in and out, which also makes multi-host input assembly explicit.
Inside the step, gradients and metrics are pmean'd and every BatchNorm
averages its statistics over 'batch', i.e. over the global batch, per view.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from byol_jax import device_augment, diagnostics, losses, networks
from byol_jax.parallel import AXIS

@flax.struct.dataclass
class TrainState:
  """Everything a run carries from step to step, as one pytree.

  SimSiam and the 'no target network' ablations have `target_params` and
  `target_batch_stats` set to None: the target is stop_gradient(online).
  """
  step: jax.Array
  online_params: Any
  online_batch_stats: Any
  target_params: Any
  target_batch_stats: Any
  opt_state: Any


def init_state(rng: jax.Array, network: networks.SSLNetwork,
               optimizer: optax.GradientTransformation,
               image_shape: tuple[int, int, int], use_target: bool,
               target_init: str = 'independent') -> TrainState:
  """Initialises online (and target) variables and the optimizer state.

  target_init: 'independent' draws the target from its own key, as the
    official BYOL code does; 'copy' starts it equal to the online network.
  """
  online_key, target_key = jax.random.split(rng)
  dummy = jnp.zeros((2, *image_shape), jnp.float32)
  init = jax.jit(functools.partial(network.init, train=False))
  online = init(online_key, dummy)
  target_params = target_stats = None
  if use_target:
    if target_init == 'independent':
      target = init(target_key, dummy)
    elif target_init == 'copy':
      # Own buffers, not aliases: the train step donates both trees, and one
      # buffer donated twice is an error at the first step.
      target = jax.tree.map(jnp.copy, online)
    else:
      raise ValueError(
          f"target.init must be 'independent' or 'copy', got {target_init!r}")
    target_params, target_stats = target['params'], target['batch_stats']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      online_params=online['params'],
      online_batch_stats=online['batch_stats'],
      target_params=target_params,
      target_batch_stats=target_stats,
      opt_state=optimizer.init(online['params']))


def _forward(network, params, batch_stats, images, predict):
  """Train-mode forward of one view; returns (outputs, new batch_stats)."""
  out, mutated = network.apply(
      {'params': params, 'batch_stats': batch_stats}, images, train=True,
      predict=predict, mutable=['batch_stats'])
  return out, mutated['batch_stats']


def train_step(state: TrainState, batch: dict[str, jax.Array],
               rng: jax.Array, *, network: networks.SSLNetwork,
               optimizer: optax.GradientTransformation,
               lr_schedule: Callable, tau_schedule: Callable, loss_config,
               axis_name: Optional[str] = AXIS,
               device_views: Optional[dict[str, Any]] = None,
               rank_every: int = 1,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on this device's shard of the global batch.

  Args:
    state: replicated TrainState.
    batch: {'view1', 'view2': (b, H, W, C) float32, 'label': (b,) int32}:
      normalised views, or with `device_views` the crops in [0, 1].
    rng: replicated key; with `device_views`, each image's augmentation
      draws are folded from (rng, step, view, global index).
    axis_name: the named device axis (None only for unmapped debugging).
    device_views: {'view1', 'view2': view parameters, 'mean', 'std'} to
      finish the views on device (`device_augment`), or None.
    rank_every: the projections' effective rank (an SVD) is computed when
      the new step count is a multiple of this (the trainer: its logging
      period), NaN on other steps; see `diagnostics.collapse_metrics`.

  Returns:
    The new state and a dict of scalar metrics, averaged over devices.
  """
  if device_views is not None:
    batch = _finish_views(batch, rng, state.step, device_views, axis_name)
  use_target = state.target_params is not None
  use_predictor = network.predictor is not None

  def loss_fn(params):
    out1, stats = _forward(network, params, state.online_batch_stats,
                           batch['view1'], True)
    out2, stats = _forward(network, params, stats, batch['view2'], True)
    if use_target:
      t1, t_stats = _forward(network, state.target_params,
                             state.target_batch_stats, batch['view1'], False)
      t2, t_stats = _forward(network, state.target_params, t_stats,
                             batch['view2'], False)
      target_1, target_2 = t1['projection'], t2['projection']
    else:  # target = stop_gradient(online); the losses stop the gradient.
      t_stats = None
      target_1, target_2 = out1['projection'], out2['projection']
    key = 'prediction' if use_predictor else 'projection'
    if loss_config.name == 'byol':
      ssl = losses.infonce_alpha_beta_loss(
          out1[key], out2[key], target_1, target_2, alpha=loss_config.alpha,
          beta=loss_config.beta, axis_name=axis_name,
          stop_gradient=loss_config.stop_gradient)
    elif loss_config.name == 'simsiam':
      ssl = losses.simsiam_loss(out1[key], out2[key], target_1, target_2,
                                stop_gradient=loss_config.stop_gradient)
    else:
      raise ValueError(f'unknown loss {loss_config.name!r}')
    aux = dict(stats=stats, t_stats=t_stats, ssl=ssl,
               projection=out1['projection'])
    if 'logits' not in out1:  # No labels: no probe.
      return ssl, aux
    probe = (losses.probe_loss(out1['logits'], batch['label'])
             + losses.probe_loss(out2['logits'], batch['label'])) / 2
    aux.update(probe=probe, logits=out1['logits'])
    return ssl + probe, aux

  grads, aux = jax.grad(loss_fn, has_aux=True)(state.online_params)
  if axis_name is not None:
    # pmean of the per-device gradients. Under shard_map's varying-axes
    # typing (check_vma), autodiff already psums the gradient of the
    # replicated params over the axis (the transpose of their implicit
    # broadcast), so what remains of the pmean is the division.
    grads = jax.tree.map(lambda g: g / jax.lax.axis_size(axis_name), grads)
  updates, opt_state = optimizer.update(grads, state.opt_state,
                                        state.online_params)
  online_params = optax.apply_updates(state.online_params, updates)

  tau = tau_schedule(state.step)
  target_params = None
  if use_target:
    # xi <- tau xi + (1 - tau) theta, with the freshly updated theta.
    target_params = optax.incremental_update(
        new_tensors=online_params, old_tensors=state.target_params,
        step_size=1.0 - tau)

  projection = aux['projection']
  labels = batch['label']
  if axis_name is not None:  # Diagnostics on the global batch.
    projection = jax.lax.all_gather(projection, axis_name, tiled=True)
  metrics = {
      'loss': aux['ssl'],
      'lr': lr_schedule(state.step),
      'tau': tau if use_target else jnp.zeros(()),
      **diagnostics.collapse_metrics(
          projection, rank_due=(state.step + 1) % rank_every == 0),
  }
  if 'logits' in aux:
    metrics['probe/loss'] = aux['probe']
    metrics['probe/train_top1'] = jnp.mean(
        jnp.argmax(aux['logits'], -1) == labels).astype(jnp.float32)
  if axis_name is not None:
    # Also marks the (identical) global-batch diagnostics as replicated.
    metrics = jax.lax.pmean(metrics, axis_name)

  new_state = state.replace(
      step=state.step + 1, online_params=online_params,
      online_batch_stats=aux['stats'], target_params=target_params,
      target_batch_stats=aux['t_stats'], opt_state=opt_state)
  return new_state, metrics


def _finish_views(batch, rng, step, device_views, axis_name):
  """The colour half of both views, on device, per image."""
  local = batch['view1'].shape[0]
  first = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local
  indices = first + jnp.arange(local)
  key = jax.random.fold_in(rng, step)
  out = dict(batch)
  for i, name in enumerate(('view1', 'view2')):
    out[name] = device_augment.augment_batch(
        jax.random.fold_in(key, i), batch[name], indices, device_views[name],
        device_views['mean'], device_views['std'])
  return out


def make_train_step(mesh: Mesh, **step_kwargs) -> Callable:
  """jit(shard_map(train_step)) over `mesh`; the state is donated.

  The returned function takes (state, batch, rng) as global arrays: the state
  and rng replicated, the batch sharded along its leading axis.
  """
  step = functools.partial(train_step, axis_name=AXIS, **step_kwargs)
  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(AXIS), P()),
                         out_specs=(P(), P()))
  return jax.jit(mapped, donate_argnums=(0,))
