r"""BYOL Table 5a: the target network's decay rate tau (300 epochs, ResNet-50).

  python -m byol_jax.main --config=configs/byol_ablation_tau.py:tau=0.99 \
      --workdir=gs://BUCKET/byol_tau0.99

Paper top-1 by tau_base (`PAPER_TOP1`): 1 (constant random target) 18.8,
0.999 69.8, 0.99 72.5, 0.9 68.4, 0 (target = stop-gradient of online) 0.3.
As in the paper, tau = 0 is kept constant (`target.schedule='constant'`; the
cosine schedule would raise it to 1); every other tau follows the cosine
schedule from tau_base, and tau = 1 never moves the independently
initialised target. Everything else is the official 300-epoch preset
(LARS, base LR 0.3 x batch / 256, weight decay 1e-6, batch 4096).
"""

from byol_jax import config_lib

PAPER_TOP1 = {1.0: 18.8, 0.999: 69.8, 0.99: 72.5, 0.9: 68.4, 0.0: 0.3}


def get_config(arg=None):
  args = config_lib.parse_arg(arg, tau=0.99)
  c = config_lib.byol_ablation_config()
  c.target.tau_base = args.tau
  c.target.schedule = 'constant' if args.tau == 0 else 'cosine'
  return c
