"""A linear classifier trained on a pretrained encoder (BYOL appendix C): the step and state behind linear evaluation and fine-tuning.

- Linear evaluation: the encoder is frozen (its variables are an argument,
  never updated) and runs with BatchNorm in inference mode; only the linear
  head trains. With features extracted once (the fast path, no
  augmentation) the step takes features instead of images.
- Semi-supervised fine-tuning: encoder and head train together, BatchNorm
  in train mode with statistics over the global batch.

Both use the pretraining step's pmap semantics: `shard_map` under `jit` over
the named device axis `parallel.AXIS`, gradients pmean'd, BatchNorm
cross-replica. The optimizer is SGD with Nesterov momentum and a cosine LR
(BYOL's protocol; weight decay optional, 0 in the paper).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from byol_jax import networks, optim
from byol_jax.parallel import AXIS


@flax.struct.dataclass
class ClassifierState:
  """step; params {'head'} (+ 'encoder' when fine-tuning); the encoder's
  BatchNorm statistics when fine-tuning (None otherwise); optimizer state."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def head(num_classes: int) -> nn.Dense:
  """The linear classifier, zero-initialised (the official BYOL linear
  evaluation; the problem is convex, so the start only sets the path)."""
  return nn.Dense(num_classes, kernel_init=nn.initializers.zeros,
                  name='head')


def encoder_from_model_config(model_config, axis_name: Optional[str] = AXIS,
                              conv_plan: tuple = ()) -> networks.ResNet:
  """The pretrained network's encoder (same depth, width, stem, dtype;
  `conv_plan`: see networks.ResNet)."""
  return networks.build_network(model_config, num_classes=1,
                                bn_axis_name=axis_name,
                                conv_plan=conv_plan).encoder


def make_optimizer(opt_config, num_steps: int, batch_size: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """SGD (Nesterov by default) with cosine decay from the (batch-scaled)
  peak LR to 0 over `num_steps`; weight decay on kernels only."""
  peak = optim.scaled_learning_rate(opt_config.base_lr, batch_size,
                                    opt_config.lr_scaling)
  schedule = optim.learning_rate_schedule(peak, num_steps, 0)
  parts = []
  if opt_config.weight_decay:
    parts.append(optax.add_decayed_weights(opt_config.weight_decay,
                                           mask=optim.decay_mask))
  parts.append(optax.sgd(schedule, momentum=opt_config.momentum,
                         nesterov=opt_config.nesterov))
  return optax.chain(*parts), schedule


def init_state(rng: jax.Array, num_classes: int, feature_dim: int,
               optimizer: optax.GradientTransformation,
               encoder_variables: Optional[dict] = None) -> ClassifierState:
  """A zero head on `feature_dim` features; with `encoder_variables`
  (fine-tuning) the encoder's params and BatchNorm statistics too."""
  head_params = head(num_classes).init(
      rng, jnp.zeros((1, feature_dim), jnp.float32))['params']
  params, stats = {'head': head_params}, None
  if encoder_variables is not None:
    params['encoder'] = encoder_variables['params']
    stats = encoder_variables['batch_stats']
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                         batch_stats=stats, opt_state=optimizer.init(params))


def _features(encoder, state, frozen, images, train):
  """(features, new BatchNorm statistics) for the three modes."""
  if encoder is None:  # Fast path: the inputs are features already.
    return images, state.batch_stats
  if 'encoder' in state.params:  # Fine-tuning.
    variables = {'params': state.params['encoder'],
                 'batch_stats': state.batch_stats}
    if not train:
      return encoder.apply(variables, images, train=False), state.batch_stats
    feats, mutated = encoder.apply(variables, images, train=True,
                                   mutable=['batch_stats'])
    return feats, mutated['batch_stats']
  # Linear evaluation: frozen encoder, BatchNorm in inference mode.
  return jax.lax.stop_gradient(encoder.apply(frozen, images, train=False)), \
      state.batch_stats


def classifier_step(state: ClassifierState, frozen, batch: dict, *,
                    encoder: Optional[nn.Module], num_classes: int,
                    optimizer: optax.GradientTransformation,
                    lr_schedule: Callable, axis_name: str = AXIS):
  """One SGD step on this device's shard of the global batch.

  Args:
    state: replicated ClassifierState.
    frozen: the frozen encoder's variables (linear evaluation), else None.
    batch: {'image': (b, H, W, C) images or (b, F) features, 'label': (b,)}.
  Returns:
    The new state; metrics (loss, train top-1, LR) averaged over devices.
  """
  def loss_fn(params):
    feats, stats = _features(encoder, state.replace(params=params), frozen,
                             batch['image'], train=True)
    logits = head(num_classes).apply({'params': params['head']}, feats)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']).mean()
    return loss, (stats, logits)

  (loss, (stats, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # The pmean of per-device gradients: under shard_map's varying-axes typing
  # autodiff already psums the gradient of the replicated params (as in
  # train_step), so what remains is the division.
  grads = jax.tree.map(lambda g: g / jax.lax.axis_size(axis_name), grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_state = ClassifierState(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      batch_stats=stats, opt_state=opt_state)
  metrics = {'loss': loss,
             'train_top1': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
  metrics = jax.lax.pmean(metrics, axis_name)
  metrics['learning_rate'] = lr_schedule(state.step)
  return new_state, metrics


def make_classifier_step(mesh: Mesh, **kwargs) -> Callable:
  """jit(shard_map(classifier_step)): (state, frozen, batch) as global
  arrays, state and frozen replicated, batch sharded; state donated."""
  step = functools.partial(classifier_step, axis_name=AXIS, **kwargs)
  mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P(AXIS)),
                         out_specs=(P(), P()))
  return jax.jit(mapped, donate_argnums=(0,))


def make_predict(mesh: Mesh, *, encoder: Optional[nn.Module],
                 num_classes: int) -> Callable:
  """Eval-mode logits: (state, frozen, images) -> {'logits': (N, K)}, the
  images sharded over the mesh, the logits gathered (replicated)."""
  def predict(state, frozen, images):
    feats, _ = _features(encoder, state, frozen, images, train=False)
    return {'logits': head(num_classes).apply(
        {'params': state.params['head']}, feats)}
  mapped = jax.shard_map(predict, mesh=mesh, in_specs=(P(), P(), P(AXIS)),
                         out_specs=P(AXIS))
  # Gathered, so every process can read all logits (multi-host).
  return jax.jit(mapped, out_shardings=NamedSharding(mesh, P()))
