"""Config defaults and the papers' presets.

Config files in configs/ start from `base_config()` (pretraining) or
`eval_base_config()` (linear evaluation, fine-tuning) and override what their
paper row needs; `upgrade` brings a config read back from an older run up to
today's fields. Checks live in `validation`, step counts in `run_length`.
"""

from __future__ import annotations

import re

import ml_collections

from byol_jax import augment, networks
from byol_jax.validation import ConfigError  # noqa: F401  (raised here; configs use it)


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
      std=(0.229, 0.224, 0.225), eval_crop_fraction=0.875,
      # Your own images (byol_jax.image_folder): a folder tree, with class
      # subfolders or none (labels 'auto' | 'folders' | 'none'); eval_path
      # a labelled evaluation folder, else eval_holdout of a labelled
      # path is held out for evaluation. num_classes / num_channels /
      # image_size -1 and mean / std () are taken from the data
      # (byol_jax.dataset_info).
      path='', labels='auto', eval_path='', eval_holdout=0.1))
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
      # 'auto': on CPU each convolution shape runs XLA's convolution,
      # networks.matmul_conv (one matmul over shifted patches) or, for 3x3
      # stride-1 layers, networks.winograd_conv (Winograd F(2x2, 3x3) or
      # F(4x4, 3x3)), whichever was fastest when timed on this machine
      # (byol_jax.conv_autotune); XLA's on GPU/TPU. 'xla' / 'matmul' /
      # 'winograd' / 'winograd4' force one for every layer (Winograd where
      # it applies).
      conv_impl='auto',
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
  # Linear evaluation only: the base LRs to choose among, each trained on
  # the train split less lr_sweep_holdout class-balanced examples and
  # tested on those; the best is then trained on the whole train split.
  # Empty: optimizer.base_lr, no sweep. BYOL: (0.4, 0.3, 0.2, 0.1, 0.05)
  # on 10009 held-out images.
  c.lr_sweep = ()
  c.lr_sweep_holdout = 10000
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


def use_dataset(config, name: str) -> None:
  """Sets `config.dataset` to one of `DATASETS`."""
  config.dataset.update(DATASETS[name])


def use_preset_augment(config, name: str) -> None:
  """Sets both views of `config.augment` from an `augment.PRESETS` entry."""
  v1, v2 = augment.preset(name)
  config.augment.preset = name
  config.augment.view1 = ml_collections.ConfigDict(v1)
  config.augment.view2 = ml_collections.ConfigDict(v2)


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


def use_byol_cpu_recipe(c) -> None:
  """The CPU demo's network and optimizer (docs/cpu_demo.md): ResNet-18 at
  width 1/8 with the 'small_pool' stem, heads 512 -> 128, LARS at base LR 16
  with a 10x predictor, a copied target at tau_base 0.97."""
  c.model.update(dict(depth=18, width=0.125, stem='small_pool',
                      projector_hidden=(512,), predictor_hidden=(512,),
                      projection_dim=128))
  c.target.update(dict(tau_base=0.97, init='copy'))
  c.optimizer.update(dict(base_lr=16.0, weight_decay=1e-5, warmup_epochs=0.1,
                          predictor_lr_multiplier=10.0))


def byol_fashion_mnist_config() -> ml_collections.ConfigDict:
  """The CPU demo's BYOL recipe (configs/byol_fashion_mnist.py, measured in
  docs/cpu_demo.md): ResNet-18 width 1/8 with the 'small_pool' stem, heads
  512 -> 128, LARS at base LR 16 with a 10x predictor, batch 64, a copied
  target at tau_base 0.97, the mild-crop preset, 5.44 epochs (5100 steps)."""
  c = base_config()
  use_dataset(c, 'fashion_mnist')
  use_preset_augment(c, 'byol_fashion_mnist')
  use_byol_cpu_recipe(c)
  c.batch_size = 64
  c.num_epochs = 5.44
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  c.eval.update(dict(knn_every_epochs=0, batch_size=1000, baselines=True))
  return c


def simsiam_fashion_mnist_config(epochs: float = 2) -> ml_collections.ConfigDict:
  """SimSiam at CPU scale (configs/simsiam_fashion_mnist.py): ResNet-18
  width 1/8 with the small-image stem, projector 512 with output BN,
  predictor 512 -> 128 -> 512, SGD at base LR 0.1 with a fixed-LR
  predictor, weight decay 5e-4, batch 128, the SimSiam 28x28 views."""
  c = simsiam_overrides(base_config())
  use_dataset(c, 'fashion_mnist')
  use_preset_augment(c, 'simsiam_small')
  c.model.update(dict(depth=18, width=0.125, stem='small',
                      projector_hidden=(512,), predictor_hidden=(128,),
                      projection_dim=512))
  c.optimizer.update(dict(base_lr=0.1, weight_decay=5e-4))
  c.batch_size = 128
  c.num_epochs = epochs
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.eval.update(dict(knn_every_epochs=0, batch_size=1000, baselines=True))
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
