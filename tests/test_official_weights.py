"""DeepMind's BYOL checkpoints: a synthetic file in the official layout
(class references included) converts to our flax ResNet-50 and gives the
features of a Haiku-convention reference forward; pickles that try to run
code are refused."""

import collections
import os
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from byol_jax import official_weights

GROUPS = (3, 4, 6, 3)  # ResNet-50.


def _official_layout(rng, width=1):
  """Haiku params and state of BYOL's ResNet-50 (names as in
  shared/reference/official-byol-r50-param-tree.txt), random values."""
  params, state = {}, {}

  def conv(name, k, cin, cout):
    params[name] = {'w': (rng.randn(k, k, cin, cout)
                          * np.sqrt(2 / (k * k * cin))).astype(np.float32)}

  def bn(name, c, rank=4):
    shape = (1,) * (rank - 1) + (c,)
    # Small scales on each block's last BN keep the residual sum bounded.
    lo, hi = (0.1, 0.3) if name.endswith('batchnorm_2') else (0.5, 1.5)
    params[name] = {'scale': rng.uniform(lo, hi, shape).astype(np.float32),
                    'offset': (0.1 * rng.randn(*shape)).astype(np.float32)}
    for stat, value in (('mean_ema', 0.1 * rng.randn(*shape)),
                        ('var_ema', rng.uniform(0.5, 1.5, shape))):
      state[f'{name}/~/{stat}'] = {
          'average': value.astype(np.float32),
          'hidden': rng.randn(*shape).astype(np.float32),  # Not used.
          'counter': np.array(1000, np.int32)}

  base = 64 * width
  conv('res_net50/~/initial_conv', 7, 3, base)
  bn('res_net50/~/initial_batchnorm', base)
  cin = base
  for g, blocks in enumerate(GROUPS):
    ch = base * 2**g
    for b in range(blocks):
      p = f'res_net50/~/block_group_{g}/~/block_{b}/~/'
      if b == 0:
        conv(p + 'shortcut_conv', 1, cin, ch * 4)
        bn(p + 'shortcut_batchnorm', ch * 4)
      conv(p + 'conv_0', 1, cin, ch)
      bn(p + 'batchnorm_0', ch)
      conv(p + 'conv_1', 3, ch, ch)
      bn(p + 'batchnorm_1', ch)
      conv(p + 'conv_2', 1, ch, ch * 4)
      bn(p + 'batchnorm_2', ch * 4)
      cin = ch * 4
  for net, d_in in (('projector', cin), ('predictor', 256)):
    params[f'{net}/linear'] = {
        'w': (rng.randn(d_in, 4096) / np.sqrt(d_in)).astype(np.float32),
        'b': (0.1 * rng.randn(4096)).astype(np.float32)}
    bn(f'{net}/batch_norm', 4096, rank=2)
    params[f'{net}/linear_1'] = {
        'w': (rng.randn(4096, 256) / 64).astype(np.float32)}
  params['classifier'] = {
      'w': (rng.randn(cin, 1000) / np.sqrt(cin)).astype(np.float32),
      'b': np.zeros(1000, np.float32)}
  return params, state


class _FlatMapping(collections.abc.Mapping):
  """Like Haiku's old immutable params mapping: pickled by reference."""

  def __init__(self, d):
    self._d = dict(d)

  def __getitem__(self, k):
    return self._d[k]

  def __iter__(self):
    return iter(self._d)

  def __len__(self):
    return len(self._d)

  def __reduce__(self):
    return (type(self), (self._d,))


def _write_official_pickle(path, params, state):
  """Pickles (protocol 2, as dill writes it) with the official classes
  referenced by module and name, then forgets those modules."""
  byol_mod = types.ModuleType('byol')
  exp_mod = types.ModuleType('byol.byol_experiment')
  hk_mod = types.ModuleType('haiku._src.data_structures')
  State = collections.namedtuple(  # noqa: N806
      '_ByolExperimentState', ['online_params', 'target_params',
                               'online_state', 'target_state', 'opt_state'])
  State.__module__ = exp_mod.__name__
  exp_mod._ByolExperimentState = State
  _FlatMapping.__module__ = hk_mod.__name__
  _FlatMapping.__qualname__ = _FlatMapping.__name__ = 'FlatMapping'
  hk_mod.FlatMapping = _FlatMapping
  mods = {'byol': byol_mod, 'byol.byol_experiment': exp_mod,
          'haiku': types.ModuleType('haiku'),
          'haiku._src': types.ModuleType('haiku._src'),
          'haiku._src.data_structures': hk_mod}
  saved = {k: sys.modules.get(k) for k in mods}
  sys.modules.update(mods)
  try:
    target = {k: v for k, v in params.items()
              if not k.startswith(('predictor', 'classifier'))}
    opt_state = (optax.TraceState(trace={'w': np.zeros(3, np.float32)}),
                 optax.EmptyState())
    experiment_state = State(
        online_params=_FlatMapping({k: _FlatMapping(v)
                                    for k, v in params.items()}),
        target_params=target, online_state=state, target_state=state,
        opt_state=opt_state)
    with open(path, 'wb') as f:
      pickle.dump({'experiment_state': experiment_state,
                   'step': np.array(300_000), 'rng': np.zeros(2, np.uint32)},
                  f, protocol=2)
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


def _reference_forward(params, state, x):
  """BYOL's ResNet-50 v1 + projector + classifier in Haiku's conventions,
  written with jax.lax: TF 'SAME' padding, stride in the 3x3 conv,
  BatchNorm in inference mode with the EMA 'average' statistics."""
  def conv(x, name, stride):
    return jax.lax.conv_general_dilated(
        x, params[name]['w'], (stride, stride), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def bn(x, name):
    mean = state[f'{name}/~/mean_ema']['average']
    var = state[f'{name}/~/var_ema']['average']
    return ((x - mean) * jax.lax.rsqrt(var + 1e-5) * params[name]['scale']
            + params[name]['offset'])

  relu = jax.nn.relu
  x = relu(bn(conv(x, 'res_net50/~/initial_conv', 2),
              'res_net50/~/initial_batchnorm'))
  x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                            (1, 2, 2, 1), 'SAME')
  for g, blocks in enumerate(GROUPS):
    for b in range(blocks):
      p = f'res_net50/~/block_group_{g}/~/block_{b}/~/'
      stride = 2 if g > 0 and b == 0 else 1
      shortcut = x
      if b == 0:
        shortcut = bn(conv(x, p + 'shortcut_conv', stride),
                      p + 'shortcut_batchnorm')
      y = relu(bn(conv(x, p + 'conv_0', 1), p + 'batchnorm_0'))
      y = relu(bn(conv(y, p + 'conv_1', stride), p + 'batchnorm_1'))
      y = bn(conv(y, p + 'conv_2', 1), p + 'batchnorm_2')
      x = relu(y + shortcut)
  emb = jnp.mean(x, axis=(1, 2))
  h = emb @ params['projector/linear']['w'] + params['projector/linear']['b']
  h = relu(bn(h, 'projector/batch_norm'))
  proj = h @ params['projector/linear_1']['w']
  logits = emb @ params['classifier']['w'] + params['classifier']['b']
  return {'embedding': emb, 'projection': proj, 'logits': logits}


@pytest.fixture(scope='module')
def official_file(tmp_path_factory):
  params, state = _official_layout(np.random.RandomState(0))
  path = tmp_path_factory.mktemp('official') / 'pretrain_res50x1.pkl'
  _write_official_pickle(path, params, state)
  return path, params, state


def test_the_official_layout_matches_the_reference_tree(official_file):
  """The synthetic file has the published ResNet-50 tree (when the
  reference listing is available next to the checkout)."""
  _, params, state = official_file
  listing = os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                         'reference', 'official-byol-r50-param-tree.txt')
  if not os.path.exists(listing):
    pytest.skip('shared/reference not available')
  want = set()
  for line in open(listing):
    parts = line.split()
    if parts and parts[0] in ('P', 'S'):
      want.add((parts[0], parts[1]) + ((parts[2],) if parts[0] == 'P'
                                       else ()))
  have = {('P', m, leaf) for m, leaves in params.items() for leaf in leaves}
  have |= {('S', name) for name in state}
  assert have == want


def test_official_checkpoint_converts_to_the_same_features(official_file):
  path, params, state = official_file
  model, variables, step = official_weights.load(str(path))
  assert step == 300_000
  assert (model.depth, model.width, model.stem) == (50, 1.0, 'imagenet')
  network = official_weights.build(model, variables)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  ours = jax.jit(lambda v, x: network.apply(v, x, train=False))(variables, x)
  ref = jax.jit(_reference_forward)(params, state, x)
  for key in ('embedding', 'projection', 'logits'):
    scale = float(jnp.max(jnp.abs(ref[key])))  # float32 summation order.
    np.testing.assert_allclose(ours[key], ref[key], rtol=1e-4,
                               atol=1e-5 * scale, err_msg=key)
  assert float(jnp.std(ref['embedding'])) > 0.01  # Not a trivial match.


def test_target_network_loads_without_predictor(official_file):
  path, _, _ = official_file
  model, variables, _ = official_weights.load(str(path), which='target')
  assert not model.use_predictor and 'predictor' not in variables['params']


class _RunsCode:
  def __init__(self, call, arg):
    self.call, self.arg = call, arg

  def __reduce__(self):
    return (self.call, (self.arg,))


@pytest.mark.parametrize('call', [os.system, eval, exec, subprocess.Popen],
                         ids=['os.system', 'eval', 'exec', 'Popen'])
def test_a_pickle_that_runs_code_is_refused(tmp_path, call):
  marker = tmp_path / 'pwned'
  arg = (f'touch {marker}' if call is os.system else
         f'open({str(marker)!r}, "w")' if call in (eval, exec) else
         ['touch', str(marker)])
  payload = pickle.dumps({'experiment_state': _RunsCode(call, arg)},
                         protocol=2)
  with pytest.raises(official_weights.UnsafePickleError,
                     match='Refusing to load'):
    official_weights.load_pickle(payload)
  assert not marker.exists()


def test_functions_of_allowed_libraries_are_refused_too():
  payload = pickle.dumps(_RunsCode(jax.numpy.asarray, [1]), protocol=2)
  with pytest.raises(official_weights.UnsafePickleError, match='jax'):
    official_weights.load_pickle(payload)


def test_evaluate_reads_an_official_file(official_file, tmp_path):
  """`python -m byol_jax.evaluate --checkpoint=pretrain_res50x1.pkl` loads
  the file; evaluating it on 1-channel images is refused with a message
  before anything is compiled or written."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from byol_jax import config_lib, evaluate  # pylint: disable=g-import-not-at-top
  path, _, _ = official_file
  c = config_lib.eval_base_config()
  config_lib.use_dataset(c, 'fashion_mnist')
  c.batch_size, c.eval.batch_size = 8, 8
  with pytest.raises(config_lib.ConfigError,
                     match='pretrained on 3-channel images'):
    evaluate.run(ml_collections.ConfigDict(c), 'linear', str(path))
  assert not (path.parent / 'results').exists()
