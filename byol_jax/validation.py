"""Config validation: every check a run makes before it reads data or
compiles, each failure a `ConfigError` that says what to change.

`validate` (pretraining) and `validate_eval` (evaluations) check the config
alone; `validate_schedule` what needs the data read (the dataset fields
themselves: `dataset_info.resolve`);
`check_same_across_processes` that every host of a run got the same config.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import zlib

import numpy as np

from byol_jax import augment, console, networks, optim, run_length


class ConfigError(console.UserError, ValueError):
  """A config that cannot run; the message says what to change."""


EVAL_MODES = ('linear', 'finetune', 'knn')


def validate(config, num_devices: int, num_processes: int = 1) -> None:
  """Checks `config` before anything is read or compiled."""
  errors = []

  def check(ok, msg):
    if not ok:
      errors.append(msg)

  m = config.model
  check(m.depth in networks.RESNET_LAYOUTS,
        f'model.depth={m.depth} is unknown; use one of '
        f'{sorted(networks.RESNET_LAYOUTS)}.')
  check(m.stem in networks.STEMS,
        f'model.stem={m.stem!r} is unknown; use one of {networks.STEMS}.')
  check(m.head in networks.HEAD_PRESETS,
        f'model.head={m.head!r} is unknown; use one of '
        f'{sorted(networks.HEAD_PRESETS)}.')
  check(m.width * 64 >= 1, f'model.width={m.width} is too small (>= 1/64).')
  check(m.get('conv_impl', 'xla') in networks.CONV_IMPLS,
        f"model.conv_impl={m.get('conv_impl')!r}: use one of "
        f'{networks.CONV_IMPLS}.')
  check(m.compute_dtype in ('float32', 'bfloat16'),
        f"model.compute_dtype={m.compute_dtype!r}: use 'float32' or "
        "'bfloat16'.")
  check(config.optimizer.name in ('lars', 'sgd', 'adamw'),
        f"optimizer.name={config.optimizer.name!r} is unknown; use 'lars', "
        "'sgd' or 'adamw'.")
  check(config.optimizer.lr_scaling in ('linear', 'none'),
        f"optimizer.lr_scaling={config.optimizer.lr_scaling!r}: use "
        "'linear' or 'none'.")
  check(config.optimizer.name != 'lars'
        or config.optimizer.get('lars_order', 'official') in optim.LARS_ORDERS,
        f"optimizer.lars_order={config.optimizer.get('lars_order')!r}: use "
        f'one of {optim.LARS_ORDERS}.')
  check(config.optimizer.get('predictor_lr_multiplier', 1.0) > 0,
        'optimizer.predictor_lr_multiplier='
        f'{config.optimizer.get("predictor_lr_multiplier")} must be > 0.')
  check(config.model.use_predictor
        or config.optimizer.get('predictor_lr_multiplier', 1.0) == 1.0,
        'optimizer.predictor_lr_multiplier is set but there is no predictor '
        '(model.use_predictor=False); drop it.')
  check(config.loss.name in ('byol', 'simsiam'),
        f"loss.name={config.loss.name!r} is unknown; use 'byol' or "
        "'simsiam'.")
  check(config.loss.beta == 0 or config.loss.alpha > 0,
        f'loss.alpha={config.loss.alpha} must be > 0 when loss.beta > 0.')
  check(0.0 <= config.target.tau_base <= 1.0,
        f'target.tau_base={config.target.tau_base} is outside [0, 1].')
  check(config.target.schedule in ('cosine', 'constant'),
        f"target.schedule={config.target.schedule!r}: use 'cosine' or "
        "'constant'.")
  check(config.target.init in ('independent', 'copy'),
        f"target.init={config.target.init!r}: use 'independent' or 'copy'.")
  _check_batch_sizes(check, config, num_devices, num_processes)
  check_dataset(check, config.dataset)
  _check_eval(check, config.eval)
  _check_optimizer(check, config.optimizer)
  check(m.projection_dim >= 1 and all(h >= 1 for h in m.projector_hidden)
        and all(h >= 1 for h in m.predictor_hidden),
        f'model.projection_dim={m.projection_dim}, projector_hidden='
        f'{tuple(m.projector_hidden)} and predictor_hidden='
        f'{tuple(m.predictor_hidden)} must all be >= 1.')
  check(isinstance(config.keep_checkpoints, int)
        and config.keep_checkpoints >= 1,
        f'keep_checkpoints={config.keep_checkpoints} must be >= 1 (0 would '
        'delete every checkpoint, the last one too).')
  check(isinstance(config.checkpoint_every_steps, int)
        and config.checkpoint_every_steps >= 0,
        f'checkpoint_every_steps={config.checkpoint_every_steps} must be >= 0 '
        '(0: only the final checkpoint).')
  check(isinstance(config.profile_steps, int) and config.profile_steps >= 0,
        f'profile_steps={config.profile_steps} must be >= 0 (0: no profile).')
  check(config.num_train_steps > 0 or config.num_epochs > 0,
        'set num_epochs > 0 or num_train_steps > 0.')
  check(config.optimizer.warmup_epochs >= 0,
        'optimizer.warmup_epochs must be >= 0.')
  check(config.log_every_steps > 0, 'log_every_steps must be > 0.')
  for name in ('view1', 'view2'):
    view = config.augment[name]
    missing = set(augment.PRESETS['byol_imagenet'][0]) - set(view)
    check(not missing, f'augment.{name} lacks {sorted(missing)}.')
    if not missing:
      _check_view(check, name, view)
    check(view.get('crop_impl') in augment.CROP_IMPLS,
          f'augment.{name}.crop_impl={view.get("crop_impl")!r}: use one of '
          f'{augment.CROP_IMPLS}.')
  if errors:
    raise ConfigError('Invalid config:\n  - ' + '\n  - '.join(errors))


def validate_eval(config, mode: str, num_devices: int,
                  num_processes: int = 1) -> None:
  """Checks an evaluation config before anything is read or compiled."""
  errors = []

  def check(ok, msg):
    if not ok:
      errors.append(msg)

  check(mode in EVAL_MODES, f'--mode={mode!r} is unknown; use one of '
        f'{EVAL_MODES}.')
  if mode in ('linear', 'finetune'):
    check(config.num_epochs > 0, f'num_epochs={config.num_epochs} must be '
          '> 0.')
    check(_finite(config.optimizer.base_lr) and config.optimizer.base_lr > 0,
          f'optimizer.base_lr={config.optimizer.base_lr} must be a finite '
          'number > 0.')
    check(_finite(config.optimizer.momentum)
          and 0 <= config.optimizer.momentum < 1,
          f'optimizer.momentum={config.optimizer.momentum} must be in [0, 1).')
    check(config.optimizer.lr_scaling in ('linear', 'none'),
          f"optimizer.lr_scaling={config.optimizer.lr_scaling!r}: use "
          "'linear' or 'none'.")
    check(0 < config.subset.fraction <= 1,
          f'subset.fraction={config.subset.fraction} must be in (0, 1].')
    check(config.log_every_steps > 0, 'log_every_steps must be > 0.')
    check(config.num_train_steps == -1 or config.num_train_steps > 0,
          f'num_train_steps={config.num_train_steps}: use -1 (from '
          'num_epochs) or a number of steps > 0.')
    check(config.checkpoint_every_steps >= 0,
          'checkpoint_every_steps must be >= 0 (0: only at the end).')
    check(config.keep_checkpoints >= 1, 'keep_checkpoints must be >= 1.')
    _check_batch_sizes(check, config, num_devices, num_processes)
    _check_lr_sweep(check, config, mode)
  else:  # kNN reads only the eval settings.
    size = config.eval.batch_size
    check(isinstance(size, int) and size > 0 and size % num_devices == 0,
          f'eval.batch_size={size} must be a positive multiple of the '
          f'{num_devices} devices.')
  _check_eval(check, config.eval)
  check_dataset(check, config.dataset)
  if errors:
    raise ConfigError('Invalid config:\n  - ' + '\n  - '.join(errors))


def _check_lr_sweep(check, config, mode: str):
  """lr_sweep: distinct finite base LRs > 0, for linear evaluation only."""
  sweep = config.get('lr_sweep', ())
  if not sweep:
    return
  if mode != 'linear':
    check(False, f'lr_sweep={tuple(sweep)} applies to --mode=linear only; '
          'set lr_sweep=() and run one fine-tuning per optimizer.base_lr.')
    return
  # Distinct as printed too: each LR's head lives in lr_sweep/base_lr_<lr:g>.
  check(all(isinstance(lr, (int, float)) and _finite(lr) and lr > 0
            for lr in sweep)
        and len({f'{lr:g}' for lr in sweep}) == len(sweep),
        f'lr_sweep={tuple(sweep)} must list distinct finite base LRs > 0.')
  holdout = config.lr_sweep_holdout
  check(isinstance(holdout, int) and holdout > 0,
        f'lr_sweep_holdout={holdout} must be a number of train examples > 0.')


def _check_batch_sizes(check, config, num_devices: int, num_processes: int):
  """The global batch and the eval batch are positive and split evenly over
  the devices and the processes."""
  for name, size in (('batch_size', config.batch_size),
                     ('eval.batch_size', config.eval.batch_size)):
    if not isinstance(size, int) or size <= 0:
      check(False, f'{name}={size} must be a positive multiple of the '
            f'{num_devices} devices.')
      continue
    check(size % num_devices == 0,
          f'{name}={size} is not divisible by the {num_devices} devices; use '
          f'a multiple of {num_devices}.')
    check(size % num_processes == 0,
          f'{name}={size} is not divisible by the {num_processes} processes.')


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def _check_eval(check, e):
  """The kNN monitor's and the probe's settings."""
  for name in ('knn_k', 'knn_k_small'):
    check(isinstance(e[name], int) and e[name] >= 1,
          f'eval.{name}={e[name]} must be an integer >= 1.')
  check(_finite(e.knn_temperature) and e.knn_temperature > 0,
        f'eval.knn_temperature={e.knn_temperature} must be > 0 (0.07-0.1 as '
        'in Wu et al. 2018).')
  for name in ('knn_every_epochs', 'knn_every_steps', 'probe_every_epochs'):
    if name in e:
      check(_finite(e[name]) and e[name] >= 0,
            f'eval.{name}={e[name]} must be >= 0 (0: off).')


def check_dataset(check, d, resolved: bool = False):
  """The dataset fields; before the data is read, -1 (num_classes,
  num_channels, image_size) and () (mean, std) mean "from the data"
  (`dataset_info.resolve`), after it (`resolved`) every value is set."""
  unset = lambda value, empty: not resolved and value == empty  # noqa: E731
  check(unset(d.image_size, -1)
        or (isinstance(d.image_size, int) and d.image_size > 0),
        f'dataset.image_size={d.image_size} must be a positive integer (-1: '
        'from the data).')
  check(unset(d.num_classes, -1) or (isinstance(d.num_classes, int)
                                     and d.num_classes >= 0),
        f'dataset.num_classes={d.num_classes} must be >= 0 (0: no labels; '
        '-1: from the data).')
  check(unset(d.num_channels, -1) or d.num_channels in (1, 3),
        f'dataset.num_channels={d.num_channels} must be 1 or 3 (-1: from the '
        'data).')
  stats_unset = not resolved and not len(d.mean) and not len(d.std)
  check(stats_unset or (len(d.mean) == len(d.std) and d.num_channels in (
      -1, len(d.mean))),
        f'dataset.mean has {len(d.mean)} and dataset.std {len(d.std)} values '
        f'for {d.num_channels} channels (dataset.num_channels): give one per '
        'channel (or both () to take them from the data).')
  check(all(_finite(s) and s > 0 for s in d.std),
        f'dataset.std={tuple(d.std)} must be > 0 (it divides the pixels).')
  check(all(_finite(m) for m in d.mean),
        f'dataset.mean={tuple(d.mean)} must be finite.')
  check(0 < d.eval_crop_fraction <= 1,
        f'dataset.eval_crop_fraction={d.eval_crop_fraction} must be in (0, 1].')
  check(d.labels in ('auto', 'folders', 'none'),
        f"dataset.labels={d.labels!r}: use 'auto', 'folders' or 'none'.")
  check(_finite(d.eval_holdout) and 0 <= d.eval_holdout < 1,
        f'dataset.eval_holdout={d.eval_holdout} must be in [0, 1).')
  check(not d.eval_path or d.path,
        'dataset.eval_path is set without dataset.path (the training '
        'folder); set both.')


def _check_view(check, name, view):
  """One augmentation view: probabilities in [0, 1], ranges ordered."""
  for key in ('flip_prob', 'jitter_prob', 'grayscale_prob', 'blur_prob',
              'solarize_prob'):
    check(_finite(view[key]) and 0 <= view[key] <= 1,
          f'augment.{name}.{key}={view[key]} must be a probability in [0, 1].')
  lo, hi = view.crop_area
  check(0 < lo <= hi <= 1, f'augment.{name}.crop_area={tuple(view.crop_area)}'
        ' must be (low, high) with 0 < low <= high <= 1.')
  lo, hi = view.crop_aspect
  check(0 < lo <= hi, f'augment.{name}.crop_aspect='
        f'{tuple(view.crop_aspect)} must be (low, high) with 0 < low <= high.')
  lo, hi = view.blur_sigma
  check(0 < lo <= hi, f'augment.{name}.blur_sigma={tuple(view.blur_sigma)} '
        'must be (low, high) with 0 < low <= high.')
  for key in ('brightness', 'contrast', 'saturation'):
    check(_finite(view[key]) and view[key] >= 0,
          f'augment.{name}.{key}={view[key]} must be >= 0.')
  check(_finite(view.hue) and 0 <= view.hue <= 0.5,
        f'augment.{name}.hue={view.hue} must be in [0, 0.5].')


def _check_optimizer(check, o):
  check(_finite(o.base_lr) and o.base_lr > 0,
        f'optimizer.base_lr={o.base_lr} must be a finite number > 0.')
  check(_finite(o.weight_decay) and o.weight_decay >= 0,
        f'optimizer.weight_decay={o.weight_decay} must be >= 0.')
  check(_finite(o.momentum) and 0 <= o.momentum < 1,
        f'optimizer.momentum={o.momentum} must be in [0, 1).')


def validate_schedule(config, num_train_examples: int) -> None:
  """Checks that need the dataset size (warm-up vs. training length)."""
  steps = run_length.total_steps(config, num_train_examples)
  warmup = run_length.warmup_steps(config, num_train_examples)
  if warmup >= steps:
    raise ConfigError(
        f'optimizer.warmup_epochs={config.optimizer.warmup_epochs} gives '
        f'{warmup} warm-up steps, not fewer than the {steps} training steps; '
        'lower warmup_epochs or train longer.')


def _fingerprint(config) -> dict[str, str]:
  """Every field of `config` (dotted name -> its value as JSON) and the
  installed byol_jax version."""
  try:
    version = importlib.metadata.version('byol_jax')
  except importlib.metadata.PackageNotFoundError:
    version = 'not installed'
  flat = {'byol_jax version': json.dumps(version)}

  def walk(prefix, value):
    if isinstance(value, dict):
      for k in sorted(value):
        walk(f'{prefix}.{k}' if prefix else k, value[k])
    else:
      flat[prefix] = json.dumps(value, sort_keys=True, default=repr)
  walk('', config.to_dict())
  return flat


def check_same_across_processes(config) -> None:
  """Refuses, before anything is compiled, a multi-host run whose processes
  were given different configs (or run different byol_jax versions): they
  would compile different programs and abort in a collective. Names the
  first differing field. A no-op in a single process."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return
  flat = _fingerprint(config)
  crc = lambda text: zlib.crc32(text.encode()) & 0x7fffffff  # noqa: E731
  names = list(flat)
  summary = np.array([len(names), crc(json.dumps(flat))], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(summary))
  if (gathered == gathered[0]).all():
    return
  if (gathered[:, 0] != gathered[0, 0]).any():
    raise ConfigError(
        'The processes of this run have configs with different fields '
        f'({sorted(set(gathered[:, 0].tolist()))} fields): are they running '
        'the same byol_jax version? Start every process from the same '
        'install and command.')
  per_field = np.array([[crc(k), crc(k + '=' + v)] for k, v in flat.items()],
                       np.int32)
  rows = np.asarray(multihost_utils.process_allgather(per_field))
  differs = (rows != rows[0]).any(axis=(0, 2))
  first = int(np.argmax(differs))
  raise ConfigError(
      f'The processes of this run were given different configs: {names[first]} '
      f'is {flat[names[first]]} on process {jax.process_index()}, and not the '
      'same on every process. Give every process the same --config and '
      'overrides.')
