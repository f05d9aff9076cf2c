r"""BYOL, ResNet-50, ImageNet (BYOL paper Table 1 and the official presets).

  python -m byol_jax.main --config=configs/byol_imagenet.py \
      --workdir=gs://BUCKET/byol_r50_1000ep
  # Shorter official presets: --config=configs/byol_imagenet.py:epochs=300

Target: 74.3% top-1 / 91.6% top-5 linear evaluation after 1000 epochs
(300 epochs: 72.5%). Batch 4096, LARS (base LR 0.2 x batch / 256, weight
decay 1.5e-6, 10 warm-up epochs), tau_base 0.996, heads 4096 -> 256, the
asymmetric BYOL augmentations at 224 px. Needs TFDS imagenet2012 prepared
(manual download) in --config.dataset.data_dir.
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=1000)
  c = config_lib.byol_imagenet_config(args.epochs)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval.update(dict(knn_every_epochs=50, knn_train_examples=100_000))
  return c
