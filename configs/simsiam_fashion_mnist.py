r"""SimSiam on Fashion-MNIST: the CPU-scale SimSiam counterpart of the demo.

  python -m byol_jax.main --config=configs/simsiam_fashion_mnist.py \
      --workdir=runs/simsiam_fmnist

The demo's encoder (ResNet-18 at width 1/8, small-image stem) with SimSiam
heads shrunk to 512 (projector 512 -> 512 with output BN, predictor
512 -> 128 -> 512), one shared encoder (target = stop_gradient(online)), SGD
with a fixed-LR predictor, the SimSiam 28x28 recipe (crop area (0.2, 1), no
blur, the same for both views). Paper reference point: none at this scale;
compare with the printed raw-pixel and random-init kNN baselines.
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=2)
  return config_lib.simsiam_fashion_mnist_config(args.epochs)
