r"""BYOL on Fashion-MNIST: the CPU default (about 10 minutes on 2 cores).

  python -m byol_jax.main --config=configs/byol_fashion_mnist.py \
      --workdir=runs/byol_fmnist

Target: weighted-kNN (k=200, t=0.1) test accuracy above raw-pixel kNN (0.789)
and above the same encoder at random initialisation (0.71-0.77 over seeds);
both baselines are printed next to the result.

A ResNet-18 at width 1/8 (8-16-32-64 channels) with the 'small_pool' stem
(3x3/1 conv + 3x3/2 max-pool: 2x the images/s of the plain small-image
stem on CPU), BYOL heads shrunk to 512 -> 128, LARS (weight decay 1e-5) at
base LR 16 x batch / 256 with the predictor at 10x that LR, batch 64, 5.44
epochs (5100 steps), and the mild-crop 'byol_fashion_mnist' augmentation
preset. The target starts as a copy of the online network (as the PyTorch
peers do; the official code draws it independently, which costs a 5100-step
run its first few hundred steps) and follows it faster than in the paper
(tau_base 0.97). docs/cpu_demo.md has the measurements behind each choice,
over seeds. Reads the idx files of `apt-get install dataset-fashion-mnist`.
"""

from byol_jax import config_lib


def get_config(arg=None):
  del arg
  return config_lib.byol_fashion_mnist_config()
