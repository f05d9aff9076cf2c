r"""BYOL's augmentation-removal ablation (paper Figure 3b; 300 epochs,
ResNet-50).

  python -m byol_jax.main \
      --config=configs/byol_ablation_augment.py:keep=crop_only \
      --workdir=gs://BUCKET/byol_crop_only

`keep` names the row: baseline (all BYOL augmentations), no_flip, no_blur,
no_color, crop_flip, crop_color, crop_blur, crop_only. "color" is the
colour distortion (jitter + grayscale) and solarisation, "blur" the
Gaussian blur; a removed op gets probability 0 in both views, every kept op
keeps its BYOL probability (BYOL appendix B; byol_jax.augment.PRESETS). Paper:
72.5% top-1 with all augmentations; crop only loses about 13 points (SimCLR
about 28), the figure's headline (`PAPER_TOP1`, `PAPER_DROP`). Otherwise
the official 300-epoch preset.
"""

from byol_jax import config_lib

# Ops each row removes from the BYOL recipe.
REMOVED = {
    'baseline': (), 'no_flip': ('flip',), 'no_blur': ('blur',),
    'no_color': ('color',), 'crop_flip': ('color', 'blur'),
    'crop_color': ('flip', 'blur'), 'crop_blur': ('flip', 'color'),
    'crop_only': ('flip', 'color', 'blur'),
}
PAPER_TOP1 = {'baseline': 72.5}
PAPER_DROP = {'crop_only': 13}  # About; top-1 points below the baseline.
_PROBS = {'flip': ('flip_prob',), 'blur': ('blur_prob',),
          'color': ('jitter_prob', 'grayscale_prob', 'solarize_prob')}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, keep='baseline')
  if args.keep not in REMOVED:
    raise config_lib.ConfigError(
        f'keep={args.keep!r}: use one of {sorted(REMOVED)}.')
  c = config_lib.byol_ablation_config()
  for view in (c.augment.view1, c.augment.view2):
    for op in REMOVED[args.keep]:
      for field in _PROBS[op]:
        view[field] = 0.0
  c.augment.preset = f'byol_imagenet/{args.keep}'
  return c
