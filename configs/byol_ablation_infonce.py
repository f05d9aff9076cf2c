r"""BYOL Table 5b: from BYOL to SimCLR through the InfoNCE_{alpha,beta} family
(300 epochs, ResNet-50).

  python -m byol_jax.main \
      --config=configs/byol_ablation_infonce.py:predictor=True,target=True,beta=0 \
      --workdir=gs://BUCKET/infonce_p1_t1_b0

The eight rows (`PAPER_TOP1`, keyed by (predictor, target, beta)):
  predictor  target  beta   top-1
      y        y      0     72.5   BYOL
      y        y      1     70.9
      n        y      1     70.7
      n        n      1     69.4   SimCLR
      y        n      1     69.1
      y        n      0      0.3
      n        y      0      0.2
      n        n      0      0.1
Loss: 2 - InfoNCE_{alpha,beta} per direction (byol_jax.losses), the positive
term minus beta x 2 alpha x the log-sum-exp over the global batch's negatives
at temperature alpha = 0.1. Without a target network psi is the online
projection under stop_gradient, except in the SimCLR row, where (as in
SimCLR) the gradient flows through both views (`loss.stop_gradient=False`).
Otherwise the official 300-epoch preset (LARS, base LR 0.3, weight decay
1e-6, tau_base 0.99, batch 4096).
"""

from byol_jax import config_lib

PAPER_TOP1 = {(True, True, 0): 72.5, (True, True, 1): 70.9,
              (False, True, 1): 70.7, (False, False, 1): 69.4,
              (True, False, 1): 69.1, (True, False, 0): 0.3,
              (False, True, 0): 0.2, (False, False, 0): 0.1}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, predictor=True, target=True, beta=0.0)
  c = config_lib.byol_ablation_config()
  c.model.use_predictor = args.predictor
  c.target.use = args.target
  c.loss.update(dict(beta=args.beta, alpha=0.1))
  simclr = not args.predictor and not args.target and args.beta > 0
  c.loss.stop_gradient = not simclr
  return c
