r"""BYOL on Fashion-MNIST in one hour on 2 CPU cores.

  python -m byol_jax.main --config=configs/byol_fashion_mnist_long.py \
      --workdir=runs/byol_fmnist_long

The demo's recipe (configs/byol_fashion_mnist.py) on a network twice as wide
(ResNet-18 at width 1/4: 16-32-64-128 channels, 128-d features) for 14
epochs, with the kNN monitor every 2 epochs. docs/cpu_long.md has the
measurements behind it.
"""

from byol_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.byol_fashion_mnist_config()
  c.model.width = 0.25
  c.num_epochs = 14
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.eval.knn_every_epochs = 2
  return c
