r"""SimSiam, ResNet-50, ImageNet (SimSiam paper, Table 4) and its collapse
ablations.

  python -m byol_jax.main --config=configs/simsiam_imagenet.py:epochs=100 \
      --workdir=gs://BUCKET/simsiam_r50_100ep
  # Ablations (100 epochs in the paper):
  #   --config=configs/simsiam_imagenet.py:epochs=100,variant=no_stop_gradient
  #   --config=configs/simsiam_imagenet.py:epochs=100,variant=no_predictor

Target linear accuracy by epochs (`PAPER_TOP1`): 100 -> 68.1, 200 -> 70.0,
400 -> 70.8, 800 -> 71.3. SGD (LR 0.05 x batch / 256, momentum 0.9, weight
decay 1e-4, cosine, no warm-up, the predictor at a fixed LR), batch 512,
projector 3 x 2048 with output BN, predictor 2048 -> 512 -> 2048, one shared
encoder (target = stop_gradient(online)), the same augmentation for both
views. Ablations (`PAPER_ABLATION_TOP1`): without stop-gradient (Figure 2)
and without predictor (Table 1a) SimSiam collapses to 0.1%; the std of
l2-normalised z goes to 0 (logged as collapse/normalized_std).
"""

from byol_jax import config_lib

PAPER_TOP1 = {100: 68.1, 200: 70.0, 400: 70.8, 800: 71.3}
PAPER_ABLATION_TOP1 = {'no_stop_gradient': 0.1, 'no_predictor': 0.1}
VARIANTS = ('baseline', 'no_stop_gradient', 'no_predictor')


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=100, variant='baseline')
  if args.epochs not in PAPER_TOP1:
    raise config_lib.ConfigError(
        f'SimSiam Table 4 has epochs in {sorted(PAPER_TOP1)}.')
  if args.variant not in VARIANTS:
    raise config_lib.ConfigError(
        f'variant={args.variant!r}: use one of {VARIANTS}.')
  c = config_lib.simsiam_overrides(config_lib.base_config())
  config_lib.use_preset_augment(c, 'simsiam_imagenet')
  c.batch_size = 512
  c.num_epochs = args.epochs
  c.loss.stop_gradient = args.variant != 'no_stop_gradient'
  c.model.use_predictor = args.variant != 'no_predictor'
  c.checkpoint_every_steps = 5000
  c.eval.update(dict(knn_every_epochs=20, knn_train_examples=100_000))
  return c
