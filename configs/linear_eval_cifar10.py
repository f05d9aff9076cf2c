r"""Linear evaluation on CIFAR-10 (ResNet-18, small-image stem).

  python -m byol_jax.evaluate --mode=linear --checkpoint=WORKDIR \
      --config=configs/linear_eval_cifar10.py

Target: solo-learn reports 92.58% (BYOL, 1000 epochs; its online probe),
the SimSiam appendix 91.8% after 800 epochs. BYOL's protocol (SGD Nesterov,
cosine, 80 epochs) with CIFAR-sized crops: area (0.08, 1) of 32x32 images,
batch 512, LR 0.2; test on the full 32x32 image.
"""

from byol_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.eval_base_config()
  config_lib.use_dataset(c, 'cifar10')
  c.batch_size = 512
  c.eval.batch_size = 1000
  return c
