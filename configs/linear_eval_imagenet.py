r"""Linear evaluation on ImageNet (BYOL paper Table 1, appendix C.1).

  python -m byol_jax.evaluate --mode=linear --checkpoint=WORKDIR \
      --config=configs/linear_eval_imagenet.py

Target: 74.3% top-1 / 91.6% top-5 for the 1000-epoch BYOL ResNet-50
(configs/byol_imagenet.py); SimSiam 100 epochs: 68.1% (with LARS, batch
4096 in the SimSiam paper; here the BYOL protocol). Frozen encoder,
BatchNorm in inference mode, SGD Nesterov momentum 0.9, batch 1024, 80
epochs, cosine LR, no weight decay; train view = random resized crop +
flip, test = centre crop 224 of the image resized to 256. The paper picks
the LR on a held-out split from {0.4, 0.3, 0.2, 0.1, 0.05}:
--config.optimizer.base_lr=0.4 etc.
"""

from byol_jax import config_lib


def get_config(arg=None):
  del arg
  return config_lib.eval_base_config()
