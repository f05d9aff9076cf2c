r"""Linear evaluation on ImageNet (BYOL paper Table 1, appendix C.1).

  python -m byol_jax.evaluate --mode=linear --checkpoint=WORKDIR \
      --config=configs/linear_eval_imagenet.py

Target: 74.3% top-1 / 91.6% top-5 for the 1000-epoch BYOL ResNet-50
(configs/byol_imagenet.py); SimSiam 100 epochs: 68.1% (with LARS, batch
4096 in the SimSiam paper; here the BYOL protocol). Frozen encoder,
BatchNorm in inference mode, SGD Nesterov momentum 0.9, batch 1024, 80
epochs, cosine LR, no weight decay; train view = random resized crop +
flip, test = centre crop 224 of the image resized to 256. The LR as the
paper picks it: one classifier per base LR in {0.4, 0.3, 0.2, 0.1, 0.05}
trained on the train split less 10009 held-out images (for a streamed
TFDS split its first 10009), the best on those trained again on the whole
split and tested. One LR only (a sixth of the time):
--config.lr_sweep='()' --config.optimizer.base_lr=0.2.
"""

from byol_jax import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.eval_base_config()
  c.lr_sweep = (0.4, 0.3, 0.2, 0.1, 0.05)
  c.lr_sweep_holdout = 10009
  return c
