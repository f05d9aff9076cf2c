r"""Linear evaluation on Fashion-MNIST: the CPU demo's encoder.

  python -m byol_jax.evaluate --mode=linear \
      --checkpoint=runs/byol_fashion_mnist \
      --config=configs/linear_eval_fashion_mnist.py
  # With BYOL's crop + flip training views (slower: the encoder runs on every
  # step): --config=configs/linear_eval_fashion_mnist.py:augment=True

BYOL's protocol (frozen encoder, BatchNorm in inference mode, SGD Nesterov
momentum 0.9, cosine LR, no weight decay, 80 epochs) on the 28x28 images.
By default without augmentation: the features are extracted once and the
head trains on them (the fast path, under a minute on CPU), batch 256, LR
0.2. Add --random_init for the same network at its initialisation. Measured
on the demo's encoder (README, "The CPU demo", 2026-12-01): 0.8375 top-1;
0.7371 for the same network at random init (docs/evaluation.md).

BYOL's LR selection (a classifier per LR on 50000 train images, tested on
10000 held out, then the best on all 60000): add
--config.lr_sweep='(0.05,0.1,0.2,0.4,0.8,1.6)' (about 2 minutes on 2
cores). On the one-hour width-1/4 encoder it picked 0.4: test top-1 0.8800
against 0.8795 at the fixed 0.2 (docs/evaluation.md).
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, augment=False)
  c = config_lib.eval_base_config()
  config_lib.use_dataset(c, 'fashion_mnist')
  c.augment.update(dict(train=args.augment, crop_area=(0.8, 1.0)))
  c.batch_size = 256
  c.optimizer.base_lr = 0.2
  c.log_every_steps = 2000
  return c
