"""The ablation tool: its variants change only what they name; a tiny suite
runs end to end, is resumable, and refuses to mix settings in a workdir."""

import json
import os

import pytest

from byol_jax import validation
from byol_jax.tools import ablate
from helpers import write_fake_fashion_mnist


@pytest.mark.parametrize('name', ['collapse', 'collapse_v1'])
def test_collapse_suite_variants_differ_only_in_their_factor(name):
  suite = ablate.SUITES[name]
  configs = {v.name: ablate.variant_config(suite, v, suite.steps, seed=2,
                                           baselines=v is suite.variants[0])
             for v in suite.variants}
  assert set(configs) >= {'byol', 'byol_tau0', 'byol_no_predictor',
                          'byol_tau1', 'simclr', 'simsiam',
                          'simsiam_no_stop_gradient'}
  for c in configs.values():
    validation.validate(c, num_devices=1)
    # One encoder, batch, length and seed for all.
    assert (c.model.depth, c.model.width, c.model.stem, c.batch_size,
            c.num_train_steps, c.seed) == (18, 0.125, 'small_pool', 64,
                                           suite.steps, 2)
  byol = configs['byol']
  if name == 'collapse':
    # BYOL as the demo config has it now.
    demo = ablate.load_config('byol_fashion_mnist.py')
    assert byol.target.to_dict() == demo.target.to_dict()
    assert byol.optimizer.to_dict() == demo.optimizer.to_dict()
    assert (byol.target.init, byol.target.tau_base,
            byol.optimizer.predictor_lr_multiplier,
            byol.optimizer.lars_order) == ('copy', 0.97, 10.0, 'official')
    assert suite.seeds == (0, 1, 2) and suite.knn_every_steps == 500
    no_predictor = {'model.use_predictor', 'optimizer.predictor_lr_multiplier'}
  else:
    # The BYOL settings docs/ablations.md's first table was measured with.
    for v in ('byol', 'byol_tau0', 'byol_tau1', 'byol_no_predictor',
              'simclr'):
      c = configs[v]
      assert (c.target.init, c.optimizer.predictor_lr_multiplier,
              c.optimizer.lars_order) == ('independent', 1.0, 'optax')
    assert byol.target.tau_base == 0.99
    assert suite.seeds == (0,) and suite.knn_every_steps == 1250
    no_predictor = {'model.use_predictor'}

  def diff(a, b):
    fa, fb = _flat(configs[a].to_dict()), _flat(configs[b].to_dict())
    # Only the first variant computes the (shared) baselines.
    return {k for k in fa.keys() | fb.keys()
            if fa.get(k) != fb.get(k)} - {'eval.baselines'}

  assert diff('byol', 'byol_tau0') == {'target.tau_base', 'target.schedule'}
  if name == 'collapse':
    assert diff('byol_tau0', 'byol_tau0_one_lr') == {
        'optimizer.predictor_lr_multiplier'}
    assert configs['byol_tau0_one_lr'].optimizer.predictor_lr_multiplier == 1
  else:  # Its predictor already has the one LR: the row would repeat tau0.
    assert 'byol_tau0_one_lr' not in configs
  assert diff('byol', 'byol_tau1') == {'target.tau_base'}
  assert diff('byol', 'byol_no_predictor') == no_predictor
  assert diff('byol', 'simclr') == no_predictor | {
      'target.use', 'loss.beta', 'loss.stop_gradient'}
  assert diff('simsiam', 'simsiam_no_stop_gradient') == {
      'loss.stop_gradient'}
  # SimSiam's fixed-LR predictor: 5x since 2026-12-04, 1x in collapse_v1.
  for v in ('simsiam', 'simsiam_no_stop_gradient'):
    c = configs[v]
    assert c.optimizer.fixed_predictor_lr and c.optimizer.base_lr == 0.5
    assert c.optimizer.predictor_lr_multiplier == (
        5.0 if name == 'collapse' else 1.0)
  assert configs['byol_tau0'].target.tau_base == 0.0
  assert configs['byol_tau1'].target.tau_base == 1.0
  assert configs['simclr'].loss.beta == 1.0
  assert configs['byol'].eval.baselines and not configs['simclr'].eval.baselines


def _flat(d, prefix=''):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def test_verdicts():
  healthy = 0.1
  assert ablate.verdict(0.9, 0.005, healthy, 0.7) == 'collapsed'
  assert ablate.verdict(0.75, 0.08, healthy, 0.7) == 'learns'
  assert ablate.verdict(0.705, 0.08, healthy, 0.7) == (
      'no better than random init')
  assert ablate.verdict(0.695, 0.08, healthy, 0.7) == (
      'no better than random init')
  assert ablate.verdict(0.68, 0.08, healthy, 0.7) == 'below random init'
  # SimSiam's output BatchNorm keeps the std up while the projections
  # collapse onto one line: the effective rank tells.
  assert ablate.verdict(0.58, 0.03, healthy, 0.7, rank=1.1) == (
      'collapsed to rank 1')
  assert ablate.verdict(0.75, 0.08, healthy, 0.7, rank=6.0) == 'learns'


def test_table_and_plot_from_recorded_metrics(tmp_path):
  """The table's numbers and verdicts, from hand-made metrics records."""
  suite = ablate.SUITES['collapse']
  healthy = 1 / 128 ** 0.5

  def result(knn200, knn20, std, rank=6.0, seed=0, **extra):
    return dict(seed=seed, final={'eval/knn_top1_k200': knn200,
                       'eval/knn_top1_k20': knn20, **extra},
                curve=[{'step': 50, 'collapse/normalized_std': 0.08,
                        'collapse/healthy_std': healthy,
                        'collapse/effective_rank': 9.0},
                       {'step': 100, 'collapse/normalized_std': std,
                        'collapse/healthy_std': healthy,
                        'collapse/effective_rank': rank},
                       {'step': 100, 'eval/knn_top1_k200': knn200}])

  out = {'byol': [result(0.80, 0.82, 0.07, **{
      'random_init/knn_top1_k200': 0.70, 'random_init/knn_top1_k20': 0.72,
      'raw_pixels/knn_top1_k200': 0.73, 'raw_pixels/knn_top1_k20': 0.80})],
         'byol_no_predictor': [result(0.60, 0.65, 0.003, rank=1.2)],
         'simsiam_no_stop_gradient': [result(0.55, 0.6, 0.02, rank=1.1)]}
  table = ablate.markdown_table(suite, out, steps=100)
  rows = table.splitlines()
  assert ('| byol | learns (BYOL Table 5a, tau 0.99: 72.5) | 0.8000 | 0.8200'
          ' | +0.1000 | 0.0700 (0.0884) | 6.0 | learns |') in rows
  assert any(r.startswith('| byol_no_predictor |') and r.endswith(
      '| -0.1000 | 0.0030 (0.0884) | 1.2 | collapsed |') for r in rows)
  assert any(r.startswith('| simsiam_no_stop_gradient |') and r.endswith(
      '| 0.0200 (0.0884) | 1.1 | collapsed to rank 1 |') for r in rows)
  assert ('| same encoder at random init | baseline | 0.7000 | 0.7200 '
          '| | | | |') in rows
  assert '| raw pixels | baseline | 0.7300 | 0.8000 | | | | |' in rows
  assert 'after 100 steps, seed 0' in rows[0]
  ablate.plot(suite, out, str(tmp_path / 'p.png'))
  assert (tmp_path / 'p.png').read_bytes()[:4] == b'\x89PNG'

  # Two seeds: mean ± sample std, each seed's gain over its own random
  # init, and the verdicts counted where the seeds disagree.
  base = lambda r: {'random_init/knn_top1_k200': r,
                    'random_init/knn_top1_k20': r + 0.02,
                    'raw_pixels/knn_top1_k200': 0.73,
                    'raw_pixels/knn_top1_k20': 0.80}
  out = {'byol': [result(0.80, 0.82, 0.07, **base(0.70)),
                  result(0.72, 0.76, 0.05, rank=4.0, seed=1, **base(0.715))],
         'byol_no_predictor': [result(0.60, 0.65, 0.003, rank=1.2),
                               result(0.62, 0.66, 0.001, rank=1.0, seed=1)]}
  rows = ablate.markdown_table(suite, out, steps=100).splitlines()
  # By hand: mean 0.76, std |0.80 - 0.72| / sqrt(2) = 0.0566; gains 0.100 and
  # 0.005: 0.0525 ± 0.0672; std 0.06 ± 0.0141; rank 5.0 ± 1.4.
  assert ('| byol | learns (BYOL Table 5a, tau 0.99: 72.5) | 0.7600 ± 0.0566'
          ' | 0.7900 ± 0.0424 | +0.0525 ± 0.0672 | 0.0600 ± 0.0141 (0.0884)'
          ' | 5.0 ± 1.4 | learns 1/2, no better than random init 1/2 |'
          ) in rows
  assert any(r.startswith('| byol_no_predictor |') and r.endswith(
      '| 1.1 ± 0.1 | collapsed |') for r in rows)
  assert ('| same encoder at random init | baseline | 0.7075 ± 0.0106 | '
          '0.7275 ± 0.0106 | | | | |') in rows
  assert ('| raw pixels | baseline | 0.7300 ± 0.0000 | 0.8000 ± 0.0000 | '
          '| | | |') in rows
  assert 'mean ± sample std over seeds 0, 1' in rows[0]
  ablate.plot(suite, out, str(tmp_path / 'p2.png'))
  assert (tmp_path / 'p2.png').read_bytes()[:4] == b'\x89PNG'


@pytest.mark.slow
def test_tiny_suite_end_to_end_resumes_and_refuses_other_settings(
    tmp_path, monkeypatch):
  idx = tmp_path / 'fmnist'
  idx.mkdir()
  write_fake_fashion_mnist(idx, n_train=64, n_test=21)
  full = ablate.SUITES['collapse']
  tiny = ablate.Suite(
      variants=(full.variants[0], full.variants[-1]), steps=4,
      knn_every_steps=2,
      common={'model.width': 0.0625, 'model.projector_hidden': (16,),
              'model.predictor_hidden': (16,), 'model.projection_dim': 8,
              'batch_size': 16, 'eval.batch_size': 16, 'eval.knn_k': 20,
              'eval.knn_k_small': 5, 'optimizer.warmup_epochs': 0.0,
              'eval.probe_every_epochs': 0, 'log_every_steps': 2,
              'dataset.idx_dir': str(idx)})
  monkeypatch.setitem(ablate.SUITES, 'tiny', tiny)
  workdir = str(tmp_path / 'ablate')
  out = ablate.run_suite('tiny', workdir)
  assert set(out) == {'byol', 'simsiam_no_stop_gradient'}
  assert [r['seed'] for r in out['byol']] == [0]  # The suite's seeds.
  table = open(os.path.join(workdir, 'tiny.md')).read()
  rows = [line for line in table.splitlines() if line.startswith('| ')]
  assert [r.split(' | ')[0] for r in rows[1:]] == [
      '| byol', '| simsiam_no_stop_gradient',
      '| same encoder at random init', '| raw pixels']
  byol = out['byol'][0]['final']
  assert f'| {byol["eval/knn_top1_k20"]:.4f} |' in rows[1]
  # kNN monitored at step 2 and at the end, for the plot.
  assert [r['step'] for r in out['byol'][0]['curve']
          if 'eval/knn_top1_k20' in r] == [2, 4]
  assert os.path.getsize(os.path.join(workdir, 'tiny.png')) > 1000
  assert json.load(open(os.path.join(workdir, 'suite.json'))) == {
      'suite': 'tiny', 'steps': 4}

  # Again with a second seed: seed 0 reused (nothing retrained or
  # rewritten), seed 1 trained with its own baselines.
  results = os.path.join(workdir, 'byol', 'seed0', 'results')
  before = sorted(os.listdir(results))
  again = ablate.run_suite('tiny', workdir, only=['byol'], seeds=[0, 1])
  assert sorted(os.listdir(results)) == before == ['knn_step4.json']
  assert [r['seed'] for r in again['byol']] == [0, 1]
  assert again['byol'][0]['final'] == byol
  seed1 = again['byol'][1]['final']
  assert seed1['random_init/knn_top1_k20'] != byol['random_init/knn_top1_k20']
  assert json.load(open(os.path.join(
      workdir, 'byol', 'seed1', 'results', 'knn_step4.json')))['config'][
          'seed'] == 1
  rows = open(os.path.join(workdir, 'tiny.md')).read().splitlines()
  assert 'mean ± sample std over seeds 0, 1' in rows[0]
  with pytest.raises(validation.ConfigError, match='distinct seeds'):
    ablate.run_suite('tiny', workdir, seeds=[1, 1])

  with pytest.raises(validation.ConfigError, match='use a new --workdir'):
    ablate.run_suite('tiny', workdir, steps=6)
  with pytest.raises(validation.ConfigError, match='unknown'):
    ablate.run_suite('tiny', str(tmp_path / 'other'), only=['bogus'])
  assert not os.path.exists(tmp_path / 'other')
