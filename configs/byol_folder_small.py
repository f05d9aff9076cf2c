r"""BYOL on a folder of small images (28-64 px: icons, thumbnails, scans),
at CPU scale: the Fashion-MNIST demo's network and recipe.

  python -m byol_jax.main --config=configs/byol_folder_small.py \
      --config.dataset.path=/data/my_small_images --workdir=runs/mine

The folder as in configs/byol_folder.py (class subfolders or none). Images
are resized to `size` px (default: the median shorter side, clamped to
32-224, when size=-1) and held in memory as encoded files. Channels and
mean/std come from the data: a folder of grey images trains on one channel.
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, size=32, epochs=20.0, batch=64)
  c = config_lib.base_config()
  config_lib.use_preset_augment(c, 'byol_small')
  c.dataset.update(dict(
      name='folder', path='', labels='auto', eval_path='', eval_holdout=0.1,
      in_memory=True, train_split='train', eval_split='eval',
      image_size=args.size, num_channels=-1, num_classes=-1, mean=(), std=(),
      eval_crop_fraction=1.0))
  config_lib.use_byol_cpu_recipe(c)
  c.batch_size = args.batch
  c.num_epochs = args.epochs
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.eval.update(dict(knn_every_epochs=5, batch_size=512, baselines=True))
  return c
