"""DeepMind's BYOL checkpoint layout for the tests: Haiku parameter and state
trees of the official ResNets (byol/utils/networks.py, Haiku's ResNet
BlockGroup / BlockV1), a reference forward written from those definitions
with jax.lax, and the official checkpointer's writer (dill, protocol 2).

Pure numpy for the layout, so that tests/data/make_dill034_fixture.py can
import it in an environment with an old dill."""

import collections
import sys
import types

import numpy as np

# Official block groups: (bottleneck?, blocks per group).
OFFICIAL_RESNETS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)),
                    50: (True, (3, 4, 6, 3))}


def official_layout(rng, depth=50, width=1.0, hidden=4096, out=256,
                    classes=1000):
  """Haiku params and state of BYOL's ResNet-`depth` (names as in
  tests/data/official-byol-r50-param-tree.txt), random values. Every block
  group's first block has a projection shortcut, as the official code."""
  params, state = {}, {}
  bottleneck, groups = OFFICIAL_RESNETS[depth]
  net = f'res_net{depth}/~/'

  def conv(name, k, cin, cout):
    params[name] = {'w': (rng.randn(k, k, cin, cout)
                          * np.sqrt(2 / (k * k * cin))).astype(np.float32)}

  def bn(name, c, rank=4, last=False):
    shape = (1,) * (rank - 1) + (c,)
    # Small scales on each block's last BN keep the residual sum bounded.
    lo, hi = (0.1, 0.3) if last else (0.5, 1.5)
    params[name] = {'scale': rng.uniform(lo, hi, shape).astype(np.float32),
                    'offset': (0.1 * rng.randn(*shape)).astype(np.float32)}
    for stat, value in (('mean_ema', 0.1 * rng.randn(*shape)),
                        ('var_ema', rng.uniform(0.5, 1.5, shape))):
      state[f'{name}/~/{stat}'] = {
          'average': value.astype(np.float32),
          'hidden': rng.randn(*shape).astype(np.float32),  # Not used.
          'counter': np.array(1000, np.int32)}

  base = int(64 * width)
  conv(net + 'initial_conv', 7, 3, base)
  bn(net + 'initial_batchnorm', base)
  cin = base
  for g, blocks in enumerate(groups):
    ch = base * 2**g
    cout = ch * 4 if bottleneck else ch
    for b in range(blocks):
      p = f'{net}block_group_{g}/~/block_{b}/~/'
      if b == 0:
        conv(p + 'shortcut_conv', 1, cin, cout)
        bn(p + 'shortcut_batchnorm', cout)
      if bottleneck:
        conv(p + 'conv_0', 1, cin, ch)
        bn(p + 'batchnorm_0', ch)
        conv(p + 'conv_1', 3, ch, ch)
        bn(p + 'batchnorm_1', ch)
        conv(p + 'conv_2', 1, ch, cout)
        bn(p + 'batchnorm_2', cout, last=True)
      else:
        conv(p + 'conv_0', 3, cin, ch)
        bn(p + 'batchnorm_0', ch)
        conv(p + 'conv_1', 3, ch, ch)
        bn(p + 'batchnorm_1', ch, last=True)
      cin = cout
  for head, d_in in (('projector', cin), ('predictor', out)):
    params[f'{head}/linear'] = {
        'w': (rng.randn(d_in, hidden) / np.sqrt(d_in)).astype(np.float32),
        'b': (0.1 * rng.randn(hidden)).astype(np.float32)}
    bn(f'{head}/batch_norm', hidden, rank=2)
    params[f'{head}/linear_1'] = {
        'w': (rng.randn(hidden, out) / np.sqrt(hidden)).astype(np.float32)}
  params['classifier'] = {
      'w': (rng.randn(cin, classes) / np.sqrt(cin)).astype(np.float32),
      'b': np.zeros(classes, np.float32)}
  return params, state


def reference_forward(params, state, x, depth=50):
  """BYOL's ResNet v1 + projector + classifier in Haiku's conventions,
  written with jax.lax from the official definitions: TF 'SAME' padding, the
  stride in the bottleneck's 3x3 conv (the basic block's first conv), a
  projection shortcut in every group's first block, BatchNorm in inference
  mode with the EMA 'average' statistics."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  bottleneck, groups = OFFICIAL_RESNETS[depth]
  net = f'res_net{depth}/~/'

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
  x = relu(bn(conv(x, net + 'initial_conv', 2), net + 'initial_batchnorm'))
  x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                            (1, 2, 2, 1), 'SAME')
  for g, blocks in enumerate(groups):
    for b in range(blocks):
      p = f'{net}block_group_{g}/~/block_{b}/~/'
      stride = 2 if g > 0 and b == 0 else 1
      shortcut = x
      if b == 0:
        shortcut = bn(conv(x, p + 'shortcut_conv', stride),
                      p + 'shortcut_batchnorm')
      if bottleneck:
        y = relu(bn(conv(x, p + 'conv_0', 1), p + 'batchnorm_0'))
        y = relu(bn(conv(y, p + 'conv_1', stride), p + 'batchnorm_1'))
        y = bn(conv(y, p + 'conv_2', 1), p + 'batchnorm_2')
      else:
        y = relu(bn(conv(x, p + 'conv_0', stride), p + 'batchnorm_0'))
        y = bn(conv(y, p + 'conv_1', 1), p + 'batchnorm_1')
      x = relu(y + shortcut)
  emb = jnp.mean(x, axis=(1, 2))
  h = emb @ params['projector/linear']['w'] + params['projector/linear']['b']
  h = relu(bn(h, 'projector/batch_norm'))
  proj = h @ params['projector/linear_1']['w']
  logits = emb @ params['classifier']['w'] + params['classifier']['b']
  return {'embedding': emb, 'projection': proj, 'logits': logits}


class FlatMapping(collections.abc.Mapping):
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


def write_official_checkpoint(path, params, state, dump, rng=None):
  """Writes what byol/utils/checkpointing.py writes, with `dump` (dill.dump
  for the real thing): dict(experiment_state=_ByolExperimentState(...),
  step=300000, rng=...), protocol 2. The official classes (the experiment
  state, Haiku's FlatMapping) live in stand-in modules named as the
  official ones while it writes."""
  exp_mod = types.ModuleType('byol.byol_experiment')
  hk_mod = types.ModuleType('haiku._src.data_structures')
  state_cls = collections.namedtuple(
      '_ByolExperimentState', ['online_params', 'target_params',
                               'online_state', 'target_state', 'opt_state'])
  state_cls.__module__ = exp_mod.__name__
  exp_mod._ByolExperimentState = state_cls  # pylint: disable=protected-access
  mapping = type('FlatMapping', (FlatMapping,),
                 {'__module__': hk_mod.__name__})
  hk_mod.FlatMapping = mapping
  mods = {'byol': types.ModuleType('byol'), 'byol.byol_experiment': exp_mod,
          'haiku': types.ModuleType('haiku'),
          'haiku._src': types.ModuleType('haiku._src'),
          'haiku._src.data_structures': hk_mod}
  for name, module in mods.items():  # Packages hold their submodules.
    if '.' in name:
      parent, child = name.rsplit('.', 1)
      setattr(mods[parent], child, module)
  saved = {k: sys.modules.get(k) for k in mods}
  sys.modules.update(mods)
  try:
    target = {k: v for k, v in params.items()
              if not k.startswith(('predictor', 'classifier'))}
    # LARS's momentum buffers, as the official optimizer state holds them.
    opt_state = ({'mu': {k: {leaf: np.zeros_like(v) for leaf, v in p.items()}
                         for k, p in list(params.items())[:2]}}, ())
    experiment_state = state_cls(
        online_params=mapping({k: mapping(v) for k, v in params.items()}),
        target_params=target, online_state=state, target_state=state,
        opt_state=opt_state)
    with open(path, 'wb') as f:
      dump({'experiment_state': experiment_state, 'step': 300_000,
            'rng': np.zeros(2, np.uint32) if rng is None else rng},
           f, protocol=2)
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
