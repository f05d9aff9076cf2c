r"""SimSiam on Fashion-MNIST: the CPU-scale SimSiam counterpart of the demo.

  python -m byol_jax.main --config=configs/simsiam_fashion_mnist.py \
      --workdir=runs/simsiam_fmnist

The demo's encoder (ResNet-18 at width 1/8, small-image stem) with SimSiam
heads shrunk to 512 (projector 512 -> 512 with output BN, predictor
512 -> 128 -> 512), one shared encoder (target = stop_gradient(online)), SGD
with a fixed-LR predictor, the SimSiam 28x28 recipe (crop area (0.2, 1), no
blur, the same for both views). Paper reference point: none at this scale;
compare with the printed raw-pixel and random-init kNN baselines.
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, epochs=2)
  c = config_lib.simsiam_overrides(config_lib.base_config())
  config_lib.use_dataset(c, 'fashion_mnist')
  config_lib.use_preset_augment(c, 'simsiam_small')
  c.model.update(dict(depth=18, width=0.125, stem='small',
                      projector_hidden=(512,), predictor_hidden=(128,),
                      projection_dim=512))
  c.optimizer.update(dict(base_lr=0.1, weight_decay=5e-4))
  c.batch_size = 128
  c.num_epochs = args.epochs
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.eval.update(dict(knn_every_epochs=0, batch_size=1000, baselines=True))
  return c
