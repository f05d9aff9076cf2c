r"""BYOL on your own photos (96-224 px): a folder of images.

  python -m byol_jax.main --config=configs/byol_folder.py \
      --config.dataset.path=/data/my_images --workdir=runs/mine

`dataset.path` is a folder tree of images (any depth, no labels) or one
subfolder per class (labels derived; the kNN monitor, online probe and
baselines use them, on `dataset.eval_path` or a held-out 10% of the folder).
JPEG, PNG, BMP, GIF and WebP of any mode and size; unreadable files are
skipped and counted in the log. Classes, channels and mean/std come from the
data (`byol_jax.dataset_info`); the log says what it chose.

ResNet-50 (`:arch=r18x1` etc. for smaller), the BYOL ImageNet augmentation
at `size` px (default 160; 96-224 fit photos), LARS at the official 300-epoch
preset scaled to the batch, files read from disk (`in_memory=False`: any
number of images; True holds the encoded files in RAM).
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=300, size=160, batch=256,
                              arch='r50x1')
  c = config_lib.byol_imagenet_config(300)
  c.dataset.update(dict(
      name='folder', path='', labels='auto', eval_path='', eval_holdout=0.1,
      in_memory=False, train_split='train', eval_split='eval',
      image_size=args.size, num_channels=3, num_classes=-1, mean=(), std=(),
      eval_crop_fraction=0.875))
  c.model.depth, c.model.width = config_lib.parse_arch(args.arch)
  c.batch_size = args.batch
  c.num_epochs = args.epochs
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.eval.update(dict(knn_every_epochs=10, batch_size=256,
                     knn_train_examples=50_000))
  return c
