r"""SimSiam, ResNet-18 (CIFAR stem), CIFAR-10 (SimSiam paper, appendix D).

  python -m byol_jax.main --config=configs/simsiam_cifar10.py \
      --workdir=runs/simsiam_cifar10

Target: 91.8% linear accuracy after 800 epochs. SGD (LR 0.03 x batch / 256,
momentum 0.9, weight decay 5e-4, cosine, no warm-up), batch 512, a 2-layer
projector (2048) with output BN, predictor 2048 -> 512 -> 2048; crop area
(0.2, 1), no blur, the same recipe for both views.
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=800)
  c = config_lib.simsiam_overrides(config_lib.base_config())
  config_lib.use_dataset(c, 'cifar10')
  config_lib.use_preset_augment(c, 'simsiam_small')
  c.model.update(dict(depth=18, width=1.0, stem='small',
                      projector_hidden=(2048,)))
  c.optimizer.update(dict(base_lr=0.03, weight_decay=5e-4))
  c.batch_size = 512
  c.num_epochs = args.epochs
  c.log_every_steps = 50
  c.checkpoint_every_steps = 2000
  c.eval.update(dict(knn_every_epochs=10, batch_size=1000))
  return c
