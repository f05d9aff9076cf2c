r"""BYOL on ImageNet: Table 1 (ResNet-50), the wider/deeper encoders, and the
official presets by pretraining length.

  python -m byol_jax.main --config=configs/byol_imagenet.py \
      --workdir=gs://BUCKET/byol_r50_1000ep
  # Wider / deeper encoders: --config=configs/byol_imagenet.py:arch=r200x2
  # Shorter official presets: --config=configs/byol_imagenet.py:epochs=300

Targets (linear evaluation top-1 after 1000 epochs, `PAPER_TOP1`):
ResNet-50 74.3% (top-5 91.6%), R50x2 77.4%, R50x4 78.6%, R200x2 79.6%;
300 epochs: 72.5% (ResNet-50). Batch 4096, LARS (base LR 0.2 x batch / 256,
weight decay 1.5e-6, 10 warm-up epochs), tau_base 0.996, heads 4096 -> 256,
the asymmetric BYOL augmentations at 224 px. `arch` is rDEPTHxWIDTH for any
depth in 18..200 and width multiplier (r101x1, r152x2, ...); rows without a
paper number run too. Needs TFDS imagenet2012 prepared (manual download) in
--config.dataset.data_dir.
"""

from byol_jax import config_lib

# (arch, epochs) -> linear-evaluation top-1 (BYOL paper Tables 1 and 5).
PAPER_TOP1 = {('r50x1', 1000): 74.3, ('r50x2', 1000): 77.4,
              ('r50x4', 1000): 78.6, ('r200x2', 1000): 79.6,
              ('r50x1', 300): 72.5}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=1000, arch='r50x1')
  c = config_lib.byol_imagenet_config(args.epochs)
  c.model.depth, c.model.width = config_lib.parse_arch(args.arch)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.eval.update(dict(knn_every_epochs=50, knn_train_examples=100_000))
  return c
