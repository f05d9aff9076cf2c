r"""SimSiam, ResNet-50, ImageNet (SimSiam paper, Table 4).

  python -m byol_jax.main --config=configs/simsiam_imagenet.py:epochs=100 \
      --workdir=gs://BUCKET/simsiam_r50_100ep

Target linear accuracy by epochs: 100 -> 68.1, 200 -> 70.0, 400 -> 70.8,
800 -> 71.3. SGD (LR 0.05 x batch / 256, momentum 0.9, weight decay 1e-4,
cosine, no warm-up, the predictor at a fixed LR), batch 512, projector
3 x 2048 with output BN, predictor 2048 -> 512 -> 2048, one shared encoder
(target = stop_gradient(online)), the same augmentation for both views.
"""

from byol_jax import config_lib

PAPER_TOP1 = {100: 68.1, 200: 70.0, 400: 70.8, 800: 71.3}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=100)
  if args.epochs not in PAPER_TOP1:
    raise config_lib.ConfigError(
        f'SimSiam Table 4 has epochs in {sorted(PAPER_TOP1)}.')
  c = config_lib.simsiam_overrides(config_lib.base_config())
  config_lib.use_preset_augment(c, 'simsiam_imagenet')
  c.batch_size = 512
  c.num_epochs = args.epochs
  c.checkpoint_every_steps = 5000
  c.eval.update(dict(knn_every_epochs=20, knn_train_examples=100_000))
  return c
