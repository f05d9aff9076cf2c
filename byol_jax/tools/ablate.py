r"""The papers' collapse findings, reproduced at CPU scale in one command.

  python -m byol_jax.tools.ablate --suite=collapse --workdir=runs/ablate
  # 24 runs: 8 variants x 3 seeds of 2500 steps, ~2h25m on 2 CPU cores
  # (AMD EPYC, 5.5-6 minutes a run; docs/ablations.md).
  # One seed first, ~45 minutes (later --seeds reuse it): --seeds=0
  # A quick look: --steps=300 --seeds=0
  # A subset: --variants=byol,simsiam_no_stop_gradient
  # docs/ablations.md's first table (the older BYOL settings, seed 0, 54
  # minutes): --suite=collapse_v1

Trains each variant of the suite on Fashion-MNIST for each seed with the
same encoder, batch and step count (one workdir per variant and seed,
WORKDIR/<variant>/seed<S>, each a normal run: resumable, never
overwritten), then writes WORKDIR/<suite>.md (a table, mean +- sample std
over the seeds: weighted-kNN accuracy, its gain over the same seed's
random-init encoder, the raw-pixel baseline, the std of l2-normalised
projections against its healthy value, their effective rank, a verdict per
seed) and WORKDIR/<suite>.png (kNN accuracy, the std and the effective
rank over training: the mean over seeds, the band their range). Running
the command again skips finished runs and resumes an interrupted one.

The variants (`SUITES`), each the smallest change to a demo config:
  byol                      BYOL as the demo (EMA target, predictor)
  byol_tau0                 target = stop-gradient of online (tau = 0 kept)
  byol_tau0_one_lr          the same with the predictor at the encoder's LR
                            (Table 5a's setting; not in collapse_v1)
  byol_no_predictor         BYOL without the predictor
  byol_tau1                 a fixed random target (tau = 1)
  simclr                    beta = 1, no predictor, no target (contrastive)
  simsiam                   SimSiam (stop-gradient, predictor)
  simsiam_no_stop_gradient  SimSiam without stop-gradient
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Optional

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections.config_flags import config_flags as cf
import numpy as np
import tensorflow as tf

from byol_jax import (cli, console, diagnostics, metric_writer, train,
                      validation)

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'configs')


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  config: str  # A file in configs/.
  overrides: Mapping[str, Any]  # Dotted field -> value.
  expected: str  # What the paper found, in words and numbers.


@dataclasses.dataclass(frozen=True)
class Suite:
  variants: tuple[Variant, ...]
  steps: int
  knn_every_steps: int
  # Shared by every variant so that only the studied factor differs.
  common: Mapping[str, Any]
  # Config file -> fields set before everything else (settings a suite
  # keeps while the config files move on).
  pinned: Mapping[str, Mapping[str, Any]] = dataclasses.field(
      default_factory=dict)
  seeds: tuple[int, ...] = (0,)


_BYOL = 'byol_fashion_mnist.py'
_SIMSIAM = 'simsiam_fashion_mnist.py'
# The demo's encoder and batch for every variant (SimSiam's own config uses
# the slower no-pool stem and batch 128).
_ENCODER = {'model.depth': 18, 'model.width': 0.125,
            'model.stem': 'small_pool', 'batch_size': 64}
# collapse_v1: the BYOL settings docs/ablations.md's first table was
# measured with, before the demo moved to a copied target, tau_base 0.97
# and a 10x predictor LR, and with optax.lars's update order (the LR before
# the momentum), the default until the official order replaced it.
_V1_BYOL = {_BYOL: {'target.init': 'independent', 'target.tau_base': 0.99,
                    'optimizer.predictor_lr_multiplier': 1.0,
                    'optimizer.lars_order': 'optax'}}
# Without a predictor there is no predictor LR to multiply.
_NO_PREDICTOR = {'model.use_predictor': False,
                 'optimizer.predictor_lr_multiplier': 1.0}
# SimSiam's base LR at this scale: 600-step probes at batch 64 gave kNN
# 0.517 (LR 0.1, the config's, at 300 steps), 0.654 (0.5, smooth loss, std
# near healthy) and 0.669 (2.0, loss oscillating, online probe 0.28 vs
# 0.52): 0.5, for both SimSiam variants. The predictor's fixed LR at 5x
# that peak (the BYOL demo's lever: a predictor nearer its optimum, BYOL
# Sec. 3.2): at 2500 steps kNN 0.7894 +- 0.0090 over seeds 0-2 against
# 0.7795 +- 0.0126 at 1x (docs/ablations.md).
_SIMSIAM_LR = {'optimizer.base_lr': 0.5,
               'optimizer.predictor_lr_multiplier': 5.0}

_COLLAPSE = (
    Variant('byol', _BYOL, {}, 'learns (BYOL Table 5a, tau 0.99: 72.5)'),
    Variant('byol_tau0', _BYOL,
            {'target.tau_base': 0.0, 'target.schedule': 'constant'},
            'collapses (Table 5a, tau 0: 0.3)'),
    Variant('byol_no_predictor', _BYOL, _NO_PREDICTOR,
            'collapses (Table 5b, no predictor: 0.2)'),
    # The target stays the online network's initialisation: a fixed
    # random network (a copy of it, or an independent draw in v1).
    Variant('byol_tau1', _BYOL, {'target.tau_base': 1.0},
            'learns less than EMA (Table 5a, tau 1: 18.8)'),
    Variant('simclr', _BYOL,
            {**_NO_PREDICTOR, 'target.use': False, 'loss.beta': 1.0,
             'loss.stop_gradient': False},
            'learns (Table 5b, SimCLR: 69.4)'),
    Variant('simsiam', _SIMSIAM, _SIMSIAM_LR,
            'learns (SimSiam Fig. 2: 67.7)'),
    Variant('simsiam_no_stop_gradient', _SIMSIAM,
            {**_SIMSIAM_LR, 'loss.stop_gradient': False},
            'collapses, std -> 0 (SimSiam Fig. 2: 0.1)'),
)
# Table 5a's own setting for tau = 0: one LR for every parameter. With the
# predictor at 10x (byol_tau0) tau = 0 is a near-optimal predictor without a
# target network, which BYOL (Sec. 3.2) and SimSiam report need not
# collapse. Not in collapse_v1, whose predictor already has the one LR.
_TAU0_ONE_LR = Variant(
    'byol_tau0_one_lr', _BYOL,
    {'target.tau_base': 0.0, 'target.schedule': 'constant',
     'optimizer.predictor_lr_multiplier': 1.0},
    'collapses (Table 5a, tau 0, one LR: 0.3)')
# 2500 steps (2.7 epochs), kNN with the whole train split as the bank (k=200
# is meant for a large bank: on a 10,000-image bank BYOL's step-2500 encoder
# scored 0.672 vs 0.675 at random init, on the full bank 0.745 vs 0.730).
_COMMON = {**_ENCODER, 'eval.knn_train_examples': -1,
           'eval.probe_every_epochs': 0, 'log_every_steps': 50,
           'checkpoint_every_steps': 500}

SUITES = {
    # BYOL as configs/byol_fashion_mnist.py has it now; kNN every 500 steps
    # (~25 s each) for the curves; three seeds for error bars.
    'collapse': Suite(variants=(*_COLLAPSE[:2], _TAU0_ONE_LR,
                                *_COLLAPSE[2:]),
                      steps=2500, knn_every_steps=500,
                      common=_COMMON, seeds=(0, 1, 2)),
    # docs/ablations.md's first table: one seed, kNN at 1250 and 2500 steps
    # (~55 minutes).
    # Its SimSiam rows were measured with the predictor at 1x.
    'collapse_v1': Suite(
        variants=tuple(
            dataclasses.replace(v, overrides={
                **v.overrides, 'optimizer.predictor_lr_multiplier': 1.0})
            if v.config == _SIMSIAM else v for v in _COLLAPSE),
        steps=2500, knn_every_steps=1250, common=_COMMON, pinned=_V1_BYOL),
}


def load_config(name: str, arg: Optional[str] = None):
  path = os.path.join(CONFIG_DIR, name)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: run from a source checkout (pip install -e .), '
        'where configs/ sits next to byol_jax/.')
  module = cf._LoadConfigModule(name, path)  # pylint: disable=protected-access
  return module.get_config(arg) if arg else module.get_config()


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise validation.ConfigError(f'{dotted} is not a config field.')
  node[leaf] = value


def variant_config(suite: Suite, variant: Variant, steps: int, seed: int = 0,
                   baselines: bool = False) -> ml_collections.ConfigDict:
  """The variant's config: its base file with the suite's pinned fields, the
  suite's shared fields, then the variant's own change; `baselines`: this
  run also reports the random-init and raw-pixel kNN (one run per seed)."""
  c = load_config(variant.config)
  for key, value in {**suite.pinned.get(variant.config, {}), **suite.common,
                     **variant.overrides}.items():
    _set(c, key, value)
  c.seed = seed
  c.num_train_steps = steps
  c.eval.knn_every_steps = min(suite.knn_every_steps, steps)
  c.eval.baselines = baselines
  return c


def _check_settings(workdir: str, settings: dict) -> None:
  """A workdir holds one suite at one step count: refuses to mix."""
  path = os.path.join(workdir, 'suite.json')
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      old = json.load(f)
    if old != settings:
      raise validation.ConfigError(
          f'{workdir} holds runs of {old}, not {settings}; use a new '
          '--workdir (nothing there was changed).')
    return
  tf.io.gfile.makedirs(workdir)
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(settings, f, indent=2)


def _finished(vdir: str, steps: int) -> Optional[dict]:
  path = os.path.join(vdir, 'results', f'knn_step{steps}.json')
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)['metrics']


def run_suite(suite_name: str, workdir: str, steps: Optional[int] = None,
              only: Optional[list[str]] = None,
              seeds: Optional[list[int]] = None) -> dict[str, list[dict]]:
  """Trains every (selected) variant for every seed (the suite's unless
  given), seed by seed, then writes the table and plot.

  Returns {variant: [{'seed', 'final': final metrics, 'curve': metrics
  records}, one per seed]}.
  """
  suite = SUITES[suite_name]
  steps = steps or suite.steps
  seeds = list(suite.seeds if seeds is None else seeds)
  names = [v.name for v in suite.variants]
  unknown = sorted(set(only or ()) - set(names))
  if unknown:
    raise validation.ConfigError(f'--variants: unknown {unknown}; the '
                                 f'{suite_name} suite has {names}.')
  if not seeds or len(set(seeds)) != len(seeds):
    raise validation.ConfigError(f'--seeds={seeds}: give distinct seeds, '
                                 'e.g. --seeds=0,1,2.')
  variants = [v for v in suite.variants if not only or v.name in only]
  # Every config validated before anything is trained; the first selected
  # variant of each seed also computes that seed's baselines.
  configs = {(v.name, s): variant_config(suite, v, steps, s,
                                         baselines=v is variants[0])
             for s in seeds for v in variants}
  for c in configs.values():
    validation.validate(c, jax.device_count(), jax.process_count())
  # Seeds may be added later; the step count is the suite's identity.
  _check_settings(workdir, {'suite': suite_name, 'steps': steps})

  out = {v.name: [] for v in variants}
  for s in seeds:
    for v in variants:
      vdir = os.path.join(workdir, v.name, f'seed{s}')
      final = _finished(vdir, steps)
      if final is None:
        logging.info('Variant %s, seed %d: %s', v.name, s, dict(v.overrides))
        final = train.train_and_evaluate(configs[v.name, s], vdir)
      else:
        logging.info('Variant %s, seed %d: finished earlier, reusing %s',
                     v.name, s, vdir)
      out[v.name].append(dict(seed=s, final=final,
                              curve=metric_writer.read_metrics(
                                  os.path.join(vdir, 'metrics.jsonl'))))
  if jax.process_index() == 0:
    table = markdown_table(suite, out, steps)
    with tf.io.gfile.GFile(os.path.join(workdir, f'{suite_name}.md'),
                           'w') as f:
      f.write(table)
    plot(suite, out, os.path.join(workdir, f'{suite_name}.png'))
    print(table)
  return out


def verdict(knn: float, std: float, healthy: float,
            random_init: Optional[float], rank: float = float('inf'),
            margin: float = 0.01) -> str:
  """'collapsed' if the std of l2-normalised z fell under
  COLLAPSE_STD_FRACTION of its healthy value (the train loop's warning);
  'collapsed to rank 1' if the projections' effective rank fell under
  RANK_ONE (a batch-normalised output, like SimSiam's, keeps the std up
  while every projection lies on one line); else whether kNN beats the
  random-init encoder by `margin` ('learns'), falls under it by `margin`
  ('below random init': training lost what the random features had) or
  neither."""
  if std < diagnostics.COLLAPSE_STD_FRACTION * healthy:
    return 'collapsed'
  if rank < RANK_ONE:
    return 'collapsed to rank 1'
  if random_init is None:
    return '-'
  if knn >= random_init + margin:
    return 'learns'
  if knn <= random_init - margin:
    return 'below random init'
  return 'no better than random init'


RANK_ONE = 1.5


def _last(curve, key):
  values = [r[key] for r in curve if key in r]
  return values[-1] if values else float('nan')


def _baselines(out) -> dict[int, dict]:
  """Seed -> the final metrics of the run that computed its baselines."""
  return {r['seed']: r['final'] for runs in out.values() for r in runs
          if any(k.startswith('random_init/') for k in r['final'])}


def _seeds(out) -> list[int]:
  return sorted({r['seed'] for runs in out.values() for r in runs})


def _ks(out) -> list[int]:
  """The kNN k values in the results, largest (the headline) first."""
  final = next(iter(out.values()))[0]['final']
  return sorted({int(k.rsplit('_k', 1)[1]) for k in final
                 if k.startswith('eval/knn_top1_k')}, reverse=True)


def _mean_std(values, fmt: str = '.4f') -> str:
  """'0.8000' for one value, '0.8000 ± 0.0100' (mean ± sample std) for
  more."""
  if len(values) == 1:
    return f'{values[0]:{fmt}}'
  spread = np.std(values, ddof=1)
  return f'{np.mean(values):{fmt}} ± {spread:{fmt.lstrip("+")}}'


def _verdicts(verdicts: list[str]) -> str:
  """The seeds' verdict where they agree, else each with its count."""
  counts = collections.Counter(verdicts)
  if len(counts) == 1:
    return verdicts[0]
  return ', '.join(f'{v} {n}/{len(verdicts)}' for v, n in counts.most_common())


def markdown_table(suite: Suite, out, steps: int) -> str:
  base = _baselines(out)
  k, k_small = _ks(out)[:2]
  seeds = _seeds(out)
  spread = (f'mean ± sample std over seeds {", ".join(map(str, seeds))}'
            if len(seeds) > 1 else f'seed {seeds[0]}')
  lines = [
      f'Weighted-kNN (cosine) test accuracy after {steps} steps, {spread} '
      "(the gain over random init: each seed's own encoder at its "
      'initialisation); std = std over the batch of l2-normalised '
      'projections and their effective rank (exp of the entropy of the '
      'normalised singular values): the std a mean over the last logged '
      'interval, the rank at its last step; healthy std = 1/sqrt(d).', '',
      f'| variant | paper | kNN k={k} | kNN k={k_small} | vs random init | '
      'std (healthy) | eff. rank | verdict |',
      '|---|---|---|---|---|---|---|---|']
  rand_key = f'random_init/knn_top1_k{k}'
  for v in suite.variants:
    runs = out.get(v.name)
    if not runs:
      continue
    knn = [r['final'][f'eval/knn_top1_k{k}'] for r in runs]
    knn_small = [r['final'][f'eval/knn_top1_k{k_small}'] for r in runs]
    rand = [base.get(r['seed'], {}).get(rand_key) for r in runs]
    std = [_last(r['curve'], 'collapse/normalized_std') for r in runs]
    rank = [_last(r['curve'], 'collapse/effective_rank') for r in runs]
    healthy = _last(runs[0]['curve'], 'collapse/healthy_std')
    gain = ('-' if None in rand else
            _mean_std([a - b for a, b in zip(knn, rand)], '+.4f'))
    verdicts = [verdict(a, sd, healthy, r, rk)
                for a, sd, r, rk in zip(knn, std, rand, rank)]
    lines.append(
        f'| {v.name} | {v.expected} | {_mean_std(knn)} | '
        f'{_mean_std(knn_small)} | {gain} | {_mean_std(std)} '
        f'({healthy:.4f}) | {_mean_std(rank, ".1f")} | '
        f'{_verdicts(verdicts)} |')
  for label, prefix in (('same encoder at random init', 'random_init/'),
                        ('raw pixels', 'raw_pixels/')):
    values = [[b[f'{prefix}knn_top1_k{kk}'] for b in base.values()
               if f'{prefix}knn_top1_k{kk}' in b] for kk in (k, k_small)]
    if values[0]:
      lines.append(f'| {label} | baseline | {_mean_std(values[0])} | '
                   f'{_mean_std(values[1])} | | | | |')
  return '\n'.join(lines) + '\n'


def _series(curve, key: str, per: Optional[str] = None) -> dict[int, float]:
  """step -> value of `key` (divided by the record's `per`)."""
  return {r['step']: r[key] / (r[per] if per else 1.0) for r in curve
          if key in r}


def plot(suite: Suite, out, path: str) -> None:
  """kNN accuracy, the collapse std and the effective rank over training: a
  line per variant, the mean over its seeds, the band their range; the
  legends under the panels, off the curves."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_knn, ax_std, ax_rank) = plt.subplots(1, 3, figsize=(18, 6))
  base = _baselines(out)
  k = _ks(out)[0]
  for i, v in enumerate(suite.variants):
    runs = out.get(v.name)
    if not runs:
      continue
    # std x sqrt(d): 1 for well-spread projections, 0 for collapse, on one
    # scale for BYOL's and SimSiam's projection widths.
    for ax, key, per in ((ax_knn, f'eval/knn_top1_k{k}', None),
                         (ax_std, 'collapse/normalized_std',
                          'collapse/healthy_std'),
                         (ax_rank, 'collapse/effective_rank', None)):
      curves = [_series(r['curve'], key, per) for r in runs]
      steps = sorted(set.intersection(*(set(c) for c in curves)))
      if not steps:
        continue
      values = np.array([[c[t] for t in steps] for c in curves])
      ax.plot(steps, values.mean(0), color=f'C{i}', label=v.name,
              marker='o' if len(steps) < 20 else None)
      if len(curves) > 1:
        ax.fill_between(steps, values.min(0), values.max(0), color=f'C{i}',
                        alpha=0.2, linewidth=0)
  for label, key, style in (('random init', f'random_init/knn_top1_k{k}', ':'),
                            ('raw pixels', f'raw_pixels/knn_top1_k{k}', '--')):
    values = [b[key] for b in base.values() if key in b]
    if values:
      ax_knn.axhline(np.mean(values), color='gray', linestyle=style,
                     label=label)
  ax_std.axhline(1.0, color='gray', linestyle=':', label='healthy (1/sqrt(d))')
  ax_std.axhline(diagnostics.COLLAPSE_STD_FRACTION, color='red',
                 linestyle=':', label='collapse threshold')
  seeds = len(_seeds(out))
  ax_knn.set(title=f'weighted kNN (k={k}) test accuracy'
             + (f', mean of {seeds} seeds' if seeds > 1 else ''),
             xlabel='step')
  ax_std.set(title='std of l2-normalised projections x sqrt(d)',
             xlabel='step', ylim=(0, None))
  ax_rank.set(title='effective rank of the projections', xlabel='step',
              yscale='log')
  for ax in (ax_knn, ax_std, ax_rank):
    ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.12),
              ncol=3, frameon=False)
  metric_writer.save_figure(fig, path)


def _define_flags():
  """Defined when the command runs, so importing this module (tests,
  notebooks, the other commands) adds no flags."""
  flags.DEFINE_enum('suite', 'collapse', sorted(SUITES),
                    'Which suite of variants to run.')
  flags.DEFINE_string('workdir', None, 'Directory for the runs, the table '
                      'and the plot.')
  flags.DEFINE_integer('steps', None, "Train steps per variant (default: "
                       "the suite's).")
  flags.DEFINE_list('variants', None, 'Run only these variants.')
  flags.DEFINE_list('seeds', None, "Seeds, e.g. 0,1,2 (default: the "
                    "suite's); finished seeds are reused.")
  flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup()
  f = flags.FLAGS
  try:
    seeds = None if f.seeds is None else [int(s) for s in f.seeds]
  except ValueError:
    raise app.UsageError(f'--seeds={",".join(f.seeds)}: give integers, '
                         'e.g. --seeds=0,1,2.') from None
  run_suite(f.suite, f.workdir, f.steps, f.variants, seeds)


def run():
  """Console-script entry point (`byol-jax-ablate`)."""
  _define_flags()
  console.run(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
