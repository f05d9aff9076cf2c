r"""BYOL, ResNet-18 (CIFAR stem), CIFAR-10.

  python -m byol_jax.main --config=configs/byol_cifar10.py \
      --workdir=runs/byol_cifar10

Targets: 92.58% online linear accuracy after 1000 epochs (solo-learn);
0.910 weighted kNN after 800 epochs (lightly). solo-learn's settings: LARS,
base LR 1.0 x batch / 256, weight decay 1e-5, 10 warm-up epochs, tau_base
0.99, batch 256, heads 4096 -> 256; the 32x32 BYOL recipe (no blur).
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=1000)
  c = config_lib.base_config()
  config_lib.use_dataset(c, 'cifar10')
  config_lib.use_preset_augment(c, 'byol_small')
  c.model.update(dict(depth=18, width=1.0, stem='small'))
  c.target.tau_base = 0.99
  c.optimizer.update(dict(base_lr=1.0, weight_decay=1e-5, warmup_epochs=10.0))
  c.batch_size = 256
  c.num_epochs = args.epochs
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.eval.update(dict(knn_every_epochs=10, batch_size=1000))
  return c
