"""The ablation tool: its variants change only what they name; a tiny suite
runs end to end, is resumable, and refuses to mix settings in a workdir."""

import json
import os

import pytest

from byol_jax import validation
from byol_jax.tools import ablate
from helpers import write_fake_fashion_mnist


def test_collapse_suite_variants_differ_only_in_their_factor():
  suite = ablate.SUITES['collapse']
  configs = {v.name: ablate.variant_config(suite, v, suite.steps)
             for v in suite.variants}
  assert set(configs) >= {'byol', 'byol_tau0', 'byol_no_predictor',
                          'byol_tau1', 'simclr', 'simsiam',
                          'simsiam_no_stop_gradient'}
  for c in configs.values():
    validation.validate(c, num_devices=1)
    # One encoder, batch, length and seed for all.
    assert (c.model.depth, c.model.width, c.model.stem, c.batch_size,
            c.num_train_steps, c.seed) == (18, 0.125, 'small_pool', 64,
                                           suite.steps, 0)
  # The BYOL settings docs/ablations.md was measured with.
  for name in ('byol', 'byol_tau0', 'byol_tau1', 'byol_no_predictor',
               'simclr'):
    c = configs[name]
    assert (c.target.init, c.optimizer.predictor_lr_multiplier) == (
        'independent', 1.0)
  assert configs['byol'].target.tau_base == 0.99

  def diff(a, b):
    fa, fb = _flat(configs[a].to_dict()), _flat(configs[b].to_dict())
    # Only the first variant computes the (shared) baselines.
    return {k for k in fa.keys() | fb.keys()
            if fa.get(k) != fb.get(k)} - {'eval.baselines'}

  assert diff('byol', 'byol_tau0') == {'target.tau_base', 'target.schedule'}
  assert diff('byol', 'byol_tau1') == {'target.tau_base'}
  assert diff('byol', 'byol_no_predictor') == {'model.use_predictor'}
  assert diff('byol', 'simclr') == {'model.use_predictor', 'target.use',
                                    'loss.beta', 'loss.stop_gradient'}
  assert diff('simsiam', 'simsiam_no_stop_gradient') == {
      'loss.stop_gradient'}
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
  # SimSiam's output BatchNorm keeps the std up while the projections
  # collapse onto one line: the effective rank tells.
  assert ablate.verdict(0.58, 0.03, healthy, 0.7, rank=1.1) == (
      'collapsed to rank 1')
  assert ablate.verdict(0.75, 0.08, healthy, 0.7, rank=6.0) == 'learns'


def test_table_and_plot_from_recorded_metrics(tmp_path):
  """The table's numbers and verdicts, from hand-made metrics records."""
  suite = ablate.SUITES['collapse']
  healthy = 1 / 128 ** 0.5

  def result(knn200, knn20, std, rank=6.0, **extra):
    return dict(final={'eval/knn_top1_k200': knn200,
                       'eval/knn_top1_k20': knn20, **extra},
                curve=[{'step': 50, 'collapse/normalized_std': 0.08,
                        'collapse/healthy_std': healthy,
                        'collapse/effective_rank': 9.0},
                       {'step': 100, 'collapse/normalized_std': std,
                        'collapse/healthy_std': healthy,
                        'collapse/effective_rank': rank},
                       {'step': 100, 'eval/knn_top1_k200': knn200}])

  out = {'byol': result(0.80, 0.82, 0.07, **{
      'random_init/knn_top1_k200': 0.70, 'random_init/knn_top1_k20': 0.72,
      'raw_pixels/knn_top1_k200': 0.73, 'raw_pixels/knn_top1_k20': 0.80}),
         'byol_no_predictor': result(0.60, 0.65, 0.003, rank=1.2),
         'simsiam_no_stop_gradient': result(0.55, 0.6, 0.02, rank=1.1)}
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
  assert 'after 100 steps' in rows[0]
  ablate.plot(suite, out, str(tmp_path / 'p.png'))
  assert (tmp_path / 'p.png').read_bytes()[:4] == b'\x89PNG'


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
  table = open(os.path.join(workdir, 'tiny.md')).read()
  rows = [line for line in table.splitlines() if line.startswith('| ')]
  assert [r.split(' | ')[0] for r in rows[1:]] == [
      '| byol', '| simsiam_no_stop_gradient',
      '| same encoder at random init', '| raw pixels']
  byol = out['byol']['final']
  assert f'| {byol["eval/knn_top1_k20"]:.4f} |' in rows[1]
  # kNN monitored at step 2 and at the end, for the plot.
  assert [r['step'] for r in out['byol']['curve']
          if 'eval/knn_top1_k20' in r] == [2, 4]
  assert os.path.getsize(os.path.join(workdir, 'tiny.png')) > 1000
  assert json.load(open(os.path.join(workdir, 'suite.json'))) == {
      'suite': 'tiny', 'steps': 4}

  # Again: nothing retrained, nothing rewritten in the variants' workdirs.
  results = os.path.join(workdir, 'byol', 'results')
  before = sorted(os.listdir(results))
  again = ablate.run_suite('tiny', workdir)
  assert sorted(os.listdir(results)) == before == ['knn_step4.json']
  assert again['byol']['final'] == byol

  with pytest.raises(validation.ConfigError, match='use a new --workdir'):
    ablate.run_suite('tiny', workdir, steps=6)
  with pytest.raises(validation.ConfigError, match='unknown'):
    ablate.run_suite('tiny', str(tmp_path / 'other'), only=['bogus'])
  assert not os.path.exists(tmp_path / 'other')
