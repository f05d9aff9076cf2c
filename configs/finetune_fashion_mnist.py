r"""Semi-supervised fine-tuning on Fashion-MNIST: the CPU demo's encoder on
10% (or 1%) of the labels, class-balanced by seed.

  python -m byol_jax.evaluate --mode=finetune \
      --checkpoint=runs/byol_fashion_mnist \
      --config=configs/finetune_fashion_mnist.py:percent=10

BYOL's semi-supervised protocol (encoder + linear head, BatchNorm in train
mode, SGD Nesterov momentum 0.9, cosine LR, no weight decay, 30 epochs of
the labelled subset) with the demo's mild crops (area 0.8-1) + flip, batch
256, LR 0.4 (0.05 underfits the pretrained encoder, whose LARS-grown weight
norms shrink SGD's effective step; docs/evaluation.md). Add --random_init to
fine-tune the same network from its initialisation instead (the
supervised-from-scratch baseline).
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, percent=10)
  c = config_lib.eval_base_config()
  config_lib.use_dataset(c, 'fashion_mnist')
  c.subset.fraction = args.percent / 100
  c.augment.crop_area = (0.8, 1.0)
  c.batch_size = 256
  c.num_epochs = 30.0
  c.optimizer.base_lr = 0.4
  c.log_every_steps = 50
  return c
