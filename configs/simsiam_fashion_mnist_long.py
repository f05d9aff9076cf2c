r"""SimSiam on Fashion-MNIST in one hour on 2 CPU cores.

  python -m byol_jax.main --config=configs/simsiam_fashion_mnist_long.py \
      --workdir=runs/simsiam_fmnist_long

The encoder and length of configs/byol_fashion_mnist_long.py (ResNet-18 at
width 1/4 with the 'small_pool' stem, batch 64, 14 epochs, the kNN monitor
every 2 epochs) with SimSiam's CPU-scale recipe (configs/
simsiam_fashion_mnist.py: heads 512, SGD with a fixed-LR predictor, weight
decay 5e-4, crop area (0.2, 1) for both views) at the base LR the collapse
suite chose for this encoder and batch (0.5; byol_jax/tools/ablate.py).
docs/cpu_long.md has the measurements.
"""

from byol_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.simsiam_fashion_mnist_config(epochs=14)
  c.model.update(dict(width=0.25, stem='small_pool'))
  c.optimizer.base_lr = 0.5
  c.batch_size = 64
  c.log_every_steps = 200
  c.checkpoint_every_steps = 2000
  c.eval.knn_every_epochs = 2
  return c
