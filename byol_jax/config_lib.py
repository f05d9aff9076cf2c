"""Shared config defaults, derived values and validation.

Config files in configs/ start from `base_config()` and override what their
paper row needs. `validate()` runs before any data is read or any function is
compiled, and says what to change.
"""

from __future__ import annotations

import fractions
import importlib.metadata
import json
import math
import re
import zlib

import ml_collections
import numpy as np

from byol_jax import augment, console, networks, optim


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every preset (BYOL, ImageNet-style settings)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = ml_collections.ConfigDict(dict(
      # in_memory: load the split into RAM (MNIST / CIFAR / STL scale) for
      # random access; False streams it from the TFDS files (ImageNet).
      name='imagenet2012', source='auto', data_dir='', download=False,
      in_memory=False,
      idx_dir='/usr/share/datasets/fashion-mnist', train_split='train',
      eval_split='validation', image_size=224, num_channels=3,
      num_classes=1000, mean=(0.485, 0.456, 0.406),
      std=(0.229, 0.224, 0.225), eval_crop_fraction=0.875))
  # on_device: tf.data only crops; flip, colour, blur and solarisation run
  # in the train step (byol_jax.device_augment), as the official code does.
  c.augment = ml_collections.ConfigDict(dict(preset='byol_imagenet',
                                             on_device=False))
  v1, v2 = augment.preset('byol_imagenet')
  c.augment.view1 = ml_collections.ConfigDict(v1)
  c.augment.view2 = ml_collections.ConfigDict(v2)
  c.model = ml_collections.ConfigDict(dict(
      depth=50, width=1.0, stem='imagenet', head='byol',
      projector_hidden=(4096,), predictor_hidden=(4096,), projection_dim=256,
      use_predictor=True, compute_dtype='float32',
      # 'matmul': convolutions as one matmul over shifted patches
      # (networks.matmul_conv): 2.2-2.5x faster ResNet steps on CPU.
      conv_impl='xla',
      # True: a projection shortcut in every stage's first block, as the
      # official BYOL ResNet (differs from torchvision for ResNet-18/34 only).
      official_shortcuts=False))
  # target.use=False: target = stop_gradient(online) (SimSiam, Table 5b rows).
  # schedule: 'cosine' (tau_base -> 1) or 'constant' (Table 5a's tau = 0).
  c.target = ml_collections.ConfigDict(dict(
      use=True, tau_base=0.996, init='independent', schedule='cosine'))
  # stop_gradient=False: gradient also through the target branch; only
  # meaningful without a target network (SimCLR, SimSiam's collapse row).
  c.loss = ml_collections.ConfigDict(dict(
      name='byol', alpha=0.1, beta=0.0, stop_gradient=True))
  # lars_order: 'official' (momentum, then the LR: byol/utils/optimizers.py)
  # or 'optax' (optax.lars: the LR before the momentum; only to resume
  # checkpoints written before the official order was the default).
  c.optimizer = ml_collections.ConfigDict(dict(
      name='lars', base_lr=0.2, lr_scaling='linear', weight_decay=1.5e-6,
      momentum=0.9, trust_coefficient=1e-3, nesterov=False, warmup_epochs=10.0,
      fixed_predictor_lr=False, predictor_lr_multiplier=1.0,
      lars_order='official'))
  # The online linear probe's own optimizer (SGD + Nesterov, constant LR, no
  # weight decay); it sees stop_gradient(embedding), so it never moves the
  # encoder, and LARS's trust ratio never throttles it.
  c.probe = ml_collections.ConfigDict(dict(learning_rate=0.1, momentum=0.9))
  c.batch_size = 4096
  c.num_epochs = 1000.0  # Float: fractional epochs are allowed.
  c.num_train_steps = -1  # -1: derived from num_epochs and the dataset size.
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  c.keep_checkpoints = 3
  # > 0: a jax.profiler trace of this many steps (after 2 warm-up steps) in
  # WORKDIR/profile, for TensorBoard's Profile tab or Perfetto.
  c.profile_steps = 0
  c.eval = ml_collections.ConfigDict(dict(
      knn_every_epochs=0,  # 0: only at the end of training.
      knn_every_steps=0,  # > 0: overrides knn_every_epochs (short runs).
      # The online probe's eval-split top-1/top-5 (one pass, no kNN bank).
      probe_every_epochs=1,
      knn_k=200, knn_k_small=20, knn_temperature=0.1, batch_size=1024,
      knn_train_examples=-1,  # -1: the whole train split is the kNN bank.
      baselines=False))  # Also report raw-pixel and random-init kNN.
  return c


# Small datasets, held in memory; 32x32 and 28x28 evaluate on the full image.
DATASETS = {
    'fashion_mnist': dict(
        name='fashion_mnist', in_memory=True, train_split='train',
        eval_split='test', image_size=28, num_channels=1, num_classes=10,
        mean=(0.2860,), std=(0.3530,), eval_crop_fraction=1.0),
    'cifar10': dict(
        name='cifar10', in_memory=True, train_split='train', eval_split='test',
        image_size=32, num_channels=3, num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        eval_crop_fraction=1.0),
}


def eval_base_config() -> ml_collections.ConfigDict:
  """Defaults of the supervised protocols on a pretrained encoder
  (`python -m byol_jax.evaluate --mode=linear|finetune`): BYOL's ImageNet
  linear evaluation (appendix C): SGD Nesterov momentum 0.9, batch 1024,
  80 epochs, cosine LR, no weight decay, random resized crop + flip for
  training, centre crop for testing. The paper picks the LR on a validation
  split from {0.4, 0.3, 0.2, 0.1, 0.05}; 0.2 is the default here."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = base_config().dataset
  # train=False: no augmentation; features are extracted once (fast path).
  c.augment = ml_collections.ConfigDict(dict(
      train=True, crop_area=(0.08, 1.0), crop_aspect=(3 / 4, 4 / 3)))
  c.batch_size = 1024
  c.num_epochs = 80.0
  c.num_train_steps = -1  # -1: from num_epochs; > 0 overrides it.
  c.optimizer = ml_collections.ConfigDict(dict(
      base_lr=0.2, lr_scaling='none', momentum=0.9, nesterov=True,
      weight_decay=0.0))
  # Fine-tuning's labelled examples: a class-balanced fraction drawn with
  # `seed`, or the file names listed in `file` (SimCLR's ImageNet subsets).
  c.subset = ml_collections.ConfigDict(dict(fraction=1.0, file='', seed=0))
  c.log_every_steps = 100
  # The classifier's own checkpoints, in WORKDIR/eval/<name>/checkpoints
  # (the pretraining checkpoint is only read): a rerun resumes from them.
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.eval = base_config().eval
  c.eval.batch_size = 1000
  return c


# What a config saved before a field existed implicitly used, where that
# is not today's default: LARS runs then used optax.lars (the LR before the
# momentum trace: another optimizer-state layout and other updates).
_IMPLIED_BEFORE = {
    'optimizer.lars_order': lambda saved: (
        'optax' if saved.optimizer.get('name') == 'lars' else 'official'),
}


def upgrade(saved) -> ml_collections.ConfigDict:
  """A config read back (from a checkpoint, an export or a result) with
  every field today's defaults have: a field the saving version did not
  have gets what that version did (`_IMPLIED_BEFORE`), else the default.
  Pretraining and evaluation configs (which have `subset`) alike; after
  it, plain attribute access."""
  saved = ml_collections.ConfigDict(
      saved.to_dict() if isinstance(saved, ml_collections.ConfigDict)
      else saved)
  defaults = eval_base_config() if 'subset' in saved else base_config()

  def fill(node, default, prefix):
    for key, value in default.items():
      path = prefix + key
      if key not in node:
        with node.unlocked():
          node[key] = (_IMPLIED_BEFORE[path](saved) if path in _IMPLIED_BEFORE
                       else value)
      elif (isinstance(value, ml_collections.ConfigDict)
            and isinstance(node[key], ml_collections.ConfigDict)):
        fill(node[key], value, path + '.')
  fill(saved, defaults, '')
  return saved


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
  else:  # kNN reads only the eval settings.
    size = config.eval.batch_size
    check(isinstance(size, int) and size > 0 and size % num_devices == 0,
          f'eval.batch_size={size} must be a positive multiple of the '
          f'{num_devices} devices.')
  _check_eval(check, config.eval)
  _check_dataset(check, config.dataset)
  if errors:
    raise ConfigError('Invalid config:\n  - ' + '\n  - '.join(errors))


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


def _check_dataset(check, d):
  check(isinstance(d.image_size, int) and d.image_size > 0,
        f'dataset.image_size={d.image_size} must be a positive integer.')
  check(isinstance(d.num_classes, int) and d.num_classes >= 1,
        f'dataset.num_classes={d.num_classes} must be >= 1.')
  check(len(d.mean) == len(d.std) == d.num_channels,
        f'dataset.mean has {len(d.mean)} and dataset.std {len(d.std)} values '
        f'for {d.num_channels} channels (dataset.num_channels): give one per '
        'channel.')
  check(all(_finite(s) and s > 0 for s in d.std),
        f'dataset.std={tuple(d.std)} must be > 0 (it divides the pixels).')
  check(all(_finite(m) for m in d.mean),
        f'dataset.mean={tuple(d.mean)} must be finite.')
  check(0 < d.eval_crop_fraction <= 1,
        f'dataset.eval_crop_fraction={d.eval_crop_fraction} must be in (0, 1].')


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


EVAL_MODES = ('linear', 'finetune', 'knn')


def use_dataset(config, name: str) -> None:
  """Sets `config.dataset` to one of `DATASETS`."""
  config.dataset.update(DATASETS[name])


def use_preset_augment(config, name: str) -> None:
  """Sets both views of `config.augment` from an `augment.PRESETS` entry."""
  v1, v2 = augment.preset(name)
  config.augment.preset = name
  config.augment.view1 = ml_collections.ConfigDict(v1)
  config.augment.view2 = ml_collections.ConfigDict(v2)


def steps_per_epoch(config, num_train_examples: int) -> int:
  """Whole batches per epoch: the epoch boundaries of logging and periodic
  evaluations (run lengths use `epochs_to_steps`)."""
  return max(num_train_examples // config.batch_size, 1)


def epochs_to_steps(epochs: float, num_train_examples: int,
                    batch_size: int) -> int:
  """The official run length: epochs * num_examples // batch_size
  (byol/configs/byol.py: 1000 ImageNet epochs at batch 4096 are 312,784
  steps, 10 warm-up epochs 3,127). Fractional epochs are allowed; they are
  read as the decimal written (3.628, not its binary float), so the count
  never depends on float rounding."""
  exact = fractions.Fraction(repr(float(epochs))) * num_train_examples
  return int(exact // batch_size)


def total_steps(config, num_train_examples: int) -> int:
  if config.num_train_steps > 0:
    return config.num_train_steps
  return max(epochs_to_steps(config.num_epochs, num_train_examples,
                             config.batch_size), 1)


class ConfigError(console.UserError, ValueError):
  """A config that cannot run; the message says what to change."""


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
  _check_dataset(check, config.dataset)
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


def validate_data(dataset_config, channels: int, classes: int) -> None:
  """The dataset fields against the data read (before compiling): channels
  as the images have them, and at least as many classes as the labels
  use (fewer would silently fold labels into wrong accuracies)."""
  d = dataset_config
  if channels != d.num_channels:
    raise ConfigError(
        f'dataset.num_channels={d.num_channels} but {d.name} images have '
        f'{channels} channels; set --config.dataset.num_channels={channels}.')
  if classes > d.num_classes:
    raise ConfigError(
        f'dataset.num_classes={d.num_classes} but {d.name} labels go up to '
        f'{classes - 1}; set --config.dataset.num_classes={classes}.')


def validate_schedule(config, num_train_examples: int) -> None:
  """Checks that need the dataset size (warm-up vs. training length)."""
  steps = total_steps(config, num_train_examples)
  warmup = warmup_steps(config, num_train_examples)
  if warmup >= steps:
    raise ConfigError(
        f'optimizer.warmup_epochs={config.optimizer.warmup_epochs} gives '
        f'{warmup} warm-up steps, not fewer than the {steps} training steps; '
        'lower warmup_epochs or train longer.')


def warmup_steps(config, num_train_examples: int) -> int:
  return epochs_to_steps(config.optimizer.warmup_epochs, num_train_examples,
                         config.batch_size)


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument 'k1=v1,k2=v2' (the text after ':' in
  --config=configs/x.py:k1=v1) into typed fields, with `defaults`' types."""
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    if '=' not in item:
      raise ConfigError(f'config argument {item!r} is not key=value; known '
                        f'keys: {sorted(defaults)}.')
    key, value = item.split('=', 1)
    if key not in defaults:
      raise ConfigError(f'unknown config argument {key!r}; known keys: '
                        f'{sorted(defaults)}.')
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() in ('1', 'true', 'yes')
    else:
      out[key] = kind(value)
  return out


def parse_arch(arch: str) -> tuple[int, float]:
  """'r50x2' -> (depth 50, width 2.0): the papers' ResNet names."""
  m = re.fullmatch(r'r(\d+)x(\d+(?:\.\d+)?)', arch)
  if not m or int(m.group(1)) not in networks.RESNET_LAYOUTS:
    raise ConfigError(f'arch={arch!r}: use rDEPTHxWIDTH with DEPTH in '
                      f'{sorted(networks.RESNET_LAYOUTS)}, e.g. r50x1, r200x2.')
  return int(m.group(1)), float(m.group(2))


# BYOL's official presets by pretraining length (byol/configs/byol.py):
# epochs ->
# (base LR, weight decay, tau_base).
BYOL_IMAGENET_PRESETS = {
    40: (0.45, 1e-6, 0.97),
    100: (0.45, 1e-6, 0.99),
    300: (0.3, 1e-6, 0.99),
    1000: (0.2, 1.5e-6, 0.996),
}


def byol_imagenet_config(epochs: int = 1000) -> ml_collections.ConfigDict:
  """BYOL ResNet-50 on ImageNet with the official preset for `epochs`."""
  if epochs not in BYOL_IMAGENET_PRESETS:
    raise ConfigError(f'BYOL has official presets for epochs in '
                      f'{sorted(BYOL_IMAGENET_PRESETS)}, not {epochs}.')
  c = base_config()
  lr, wd, tau = BYOL_IMAGENET_PRESETS[epochs]
  c.num_epochs = epochs
  c.optimizer.update(dict(base_lr=lr, weight_decay=wd))
  c.target.tau_base = tau
  return c


def byol_ablation_config() -> ml_collections.ConfigDict:
  """The base of the BYOL paper's ablations (Table 5, Figure 3): ResNet-50,
  the official 300-epoch preset, a kNN monitor every 25 epochs."""
  c = byol_imagenet_config(300)
  c.eval.update(dict(knn_every_epochs=25, knn_train_examples=100_000))
  return c


def simsiam_overrides(c):
  """Turns a BYOL config into SimSiam: SimSiam heads, no target network,
  negative-cosine loss, SGD with a fixed-LR predictor, no warm-up."""
  c.model.update(dict(head='simsiam', projector_hidden=(2048, 2048),
                      predictor_hidden=(512,), projection_dim=2048))
  c.target.use = False
  c.loss.name = 'simsiam'
  c.optimizer = ml_collections.ConfigDict(dict(
      name='sgd', base_lr=0.05, lr_scaling='linear', weight_decay=1e-4,
      momentum=0.9, nesterov=False, warmup_epochs=0.0,
      fixed_predictor_lr=True, predictor_lr_multiplier=1.0,
      trust_coefficient=1e-3))
  return c
