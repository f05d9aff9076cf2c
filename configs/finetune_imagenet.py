r"""Semi-supervised fine-tuning on 1% or 10% of ImageNet's labels (BYOL paper
Table 2, appendix C.2).

  python -m byol_jax.evaluate --mode=finetune --checkpoint=WORKDIR \
      --config=configs/finetune_imagenet.py:percent=1 \
      --config.subset.file=/path/to/simclr/imagenet_subsets/1percent.txt

Target (BYOL ResNet-50): 53.2% / 68.8% top-1 with 1% / 10% of the labels.
The encoder and a new linear head train together (BatchNorm in train mode
over the global batch), SGD Nesterov momentum 0.9, batch 1024, cosine LR,
no weight decay, 30 epochs of the subset for 1% and 50 for 10%; crop +
flip training views, centre-crop test. The paper picks the LR from
{0.01, 0.02, 0.05, 0.1, 0.005}; 0.02 here. The subsets are SimCLR's files
(1percent.txt / 10percent.txt, one file name per line); without a file, a
class-balanced subset drawn with subset.seed is used instead.
"""

from byol_jax import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, percent=10)
  if args.percent not in (1, 10):
    raise config_lib.ConfigError(f'percent={args.percent}: use 1 or 10.')
  c = config_lib.eval_base_config()
  c.subset.fraction = args.percent / 100
  c.num_epochs = 30.0 if args.percent == 1 else 50.0
  c.optimizer.base_lr = 0.02
  return c
