"""DeepMind's BYOL checkpoints: files written as the official checkpointer
writes them (dill.dump, protocol 2; both dill encodings) convert to our flax
networks and give the features of a reference forward written from the
official block definitions; pickles that try to run code or to build unsafe
arrays are refused without side effects."""

import io
import os
import pickle
import subprocess
import sys

import dill
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from byol_jax import official_weights, validation
from official_layout import (official_layout, reference_forward,
                             write_official_checkpoint)

DATA = os.path.join(os.path.dirname(__file__), 'data')
DILL034_FILE = os.path.join(DATA, 'official_r18_dill034.pkl')
DILL034_KWARGS = dict(depth=18, width=1 / 16, hidden=32, out=16, classes=10)


@pytest.fixture(scope='module')
def official_file(tmp_path_factory):
  """A ResNet-50 checkpoint written with today's dill (>= 0.3.6: arrays as
  dill._dill._create_array)."""
  params, state = official_layout(np.random.RandomState(0))
  path = tmp_path_factory.mktemp('official') / 'pretrain_res50x1.pkl'
  write_official_checkpoint(path, params, state, dill.dump,
                            rng=jax.random.PRNGKey(3))
  return path, params, state


def test_fixtures_are_in_the_encodings_of_both_dill_generations(
    official_file):
  def globals_of(data):
    import pickletools  # pylint: disable=g-import-not-at-top
    return {arg for op, arg, _ in pickletools.genops(data)
            if op.name == 'GLOBAL'}
  new = globals_of(official_file[0].read_bytes())
  old = globals_of(open(DILL034_FILE, 'rb').read())
  assert 'dill._dill _create_array' in new and 'dill._dill _get_attr' not in new
  assert {'dill._dill _import_module', 'dill._dill _get_attr'} <= old
  assert 'dill._dill _create_array' not in old


def test_the_official_layout_matches_the_released_tree(official_file):
  """The test layout has the names and shapes of the released ResNet-50
  (tests/data/official-byol-r50-param-tree.txt, read from the file)."""
  _, params, state = official_file
  want = set()
  with open(os.path.join(DATA, 'official-byol-r50-param-tree.txt')) as f:
    for line in f:
      parts = line.split(maxsplit=3)
      if parts and parts[0] == 'P':
        want.add(('P', parts[1], parts[2], parts[3].split(')')[0] + ')'))
      elif parts and parts[0] == 'S':
        want.add(('S', parts[1]))
  have = {('P', m, leaf, str(v.shape)) for m, leaves in params.items()
          for leaf, v in leaves.items()}
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
  ref = jax.jit(reference_forward)(params, state, x)
  for key in ('embedding', 'projection', 'logits'):
    scale = float(jnp.max(jnp.abs(ref[key])))  # float32 summation order.
    np.testing.assert_allclose(ours[key], ref[key], rtol=1e-4,
                               atol=1e-5 * scale, err_msg=key)
  assert float(jnp.std(ref['embedding'])) > 0.01  # Not a trivial match.


def test_dill_034_file_loads_the_values_written():
  """The committed file (tests/data/make_dill034_fixture.py, dill 0.3.4)
  holds exactly the arrays its generator drew."""
  params, state = official_layout(np.random.RandomState(34), **DILL034_KWARGS)
  data = official_weights.read_checkpoint(DILL034_FILE)
  assert data['step'] == 300_000
  np.testing.assert_array_equal(data['rng'], [0, 34])
  got = data['experiment_state']
  assert set(got['online_params']) == set(params)
  for module, leaves in params.items():
    for leaf, value in leaves.items():
      have = got['online_params'][module][leaf]
      assert have.dtype == value.dtype and have.shape == value.shape
      np.testing.assert_array_equal(have, value, err_msg=f'{module} {leaf}')
  for name, ema in state.items():
    for k, v in ema.items():
      np.testing.assert_array_equal(got['online_state'][name][k], v)
  assert got['online_state'][name]['counter'].dtype == np.int32


@pytest.mark.parametrize('conv_impl', ['xla', 'matmul'])
def test_official_resnet18_converts_with_its_layer1_shortcut(conv_impl):
  """The official ResNet-18 projects the shortcut of every group's first
  block, layer1's (64 -> 64, stride 1) too: the conversion builds that
  network, and its outputs equal the reference forward."""
  params, state = official_layout(np.random.RandomState(34), **DILL034_KWARGS)
  model, variables, _ = official_weights.load(DILL034_FILE)
  assert (model.depth, model.official_shortcuts) == (18, True)
  assert 'shortcut_conv' in variables['params']['encoder']['stage1_block1']
  model.conv_impl = conv_impl
  network = official_weights.build(model, variables)
  x = jax.random.normal(jax.random.key(2), (2, 40, 40, 3))
  ours = jax.jit(lambda v, x: network.apply(v, x, train=False))(variables, x)
  ref = jax.jit(lambda p, s, x: reference_forward(p, s, x, depth=18))(
      params, state, x)
  for key in ('embedding', 'projection', 'logits'):
    scale = float(jnp.max(jnp.abs(ref[key])))
    np.testing.assert_allclose(ours[key], ref[key], rtol=1e-4,
                               atol=1e-5 * scale, err_msg=key)
  assert float(jnp.std(ref['embedding'])) > 0.01


def test_conversion_refuses_leaves_the_network_does_not_use(tmp_path):
  params, state = official_layout(np.random.RandomState(1), **DILL034_KWARGS)
  extra = dict(params)
  extra['res_net18/~/block_group_1/~/block_1/~/shortcut_conv'] = {
      'w': np.zeros((1, 1, 8, 8), np.float32)}
  write_official_checkpoint(tmp_path / 'extra.pkl', extra, state, dill.dump)
  with pytest.raises(ValueError, match=r'1 leaves not used by the network: '
                     r'params/encoder/stage2_block2/shortcut_conv/kernel'):
    official_weights.load(str(tmp_path / 'extra.pkl'))
  missing = {k: v for k, v in params.items()
             if k != 'res_net18/~/block_group_0/~/block_0/~/conv_1'}
  write_official_checkpoint(tmp_path / 'missing.pkl', missing, state,
                            dill.dump)
  with pytest.raises(ValueError, match=r'needed by the network but missing: '
                     r'params/encoder/stage1_block1/Conv_1/kernel'):
    official_weights.load(str(tmp_path / 'missing.pkl'))


def test_target_network_loads_without_predictor(official_file):
  path, _, _ = official_file
  model, variables, _ = official_weights.load(str(path), which='target')
  assert not model.use_predictor and 'predictor' not in variables['params']


# --- Files that try to run code ------------------------------------------

class _Call:
  """Pickles as `fn(*args)` (REDUCE), `fn` itself pickled as given."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return (self.fn, self.args)


class _Callable(_Call):
  """A callable that pickles as `fn(*args)`: lets a pickle call the result of
  a reconstructor (as dill 0.3.4's `_get_attr(module, name)(...)`)."""

  def __call__(self, *args):
    raise AssertionError('never called while pickling')


def _import(name):
  return _Callable(dill._dill._import_module, name)  # pylint: disable=protected-access


def _attr(module, name):
  return _Callable(dill._dill._get_attr, module, name)  # pylint: disable=protected-access


def _dumps(obj):
  buf = io.BytesIO()
  pickle._Pickler(buf, protocol=2).dump(obj)  # pylint: disable=protected-access
  return buf.getvalue()


def _payloads(marker):
  cmd = f'touch {marker}'
  reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
  arr_args = (np.ndarray, (0,), b'b')
  return {
      'reduce to os.system': _Call(os.system, cmd),
      'reduce to eval': _Call(eval, f'open({str(marker)!r}, "w")'),
      'reduce to exec': _Call(exec, f'open({str(marker)!r}, "w")'),
      'reduce to Popen': _Call(subprocess.Popen, ['touch', str(marker)]),
      'dill 0.3.4: _import_module(os)': _import('os'),
      'dill 0.3.4: _get_attr(os, system)': _Call(
          _attr(_import('os'), 'system'), cmd),
      'dill 0.3.4: _get_attr(numpy, load)': _Call(
          _attr(_import('numpy'), 'load'), str(marker)),
      'dill 0.3.4: _get_attr(_codecs, decode)': _Call(
          _attr(_import('_codecs'), 'decode'), b'x', 'rot13'),
      'dill 0.3.4: _get_attr(numpy module, system)': _Call(
          _attr(_import('numpy._core.multiarray'), 'system'), cmd),
      'dill >= 0.3.6: _create_array(os.system)': _Call(
          dill._dill._create_array, os.system, (cmd,), None, None),  # pylint: disable=protected-access
      'dill >= 0.3.6: _create_array(dict)': _Call(
          dill._dill._create_array, dict, (), None, None),  # pylint: disable=protected-access
      'dill >= 0.3.6: _create_array with an instance dict': _Call(
          dill._dill._create_array, reconstruct, arr_args,  # pylint: disable=protected-access
          (1, (1,), np.dtype('f4'), False, b'\0' * 4), {'__class__': 1}),
  }


@pytest.mark.parametrize('name', sorted(_payloads('m')))
def test_a_pickle_that_runs_code_is_refused(tmp_path, name):
  marker = tmp_path / 'pwned'
  payload = _dumps({'experiment_state': _payloads(marker)[name]})
  with pytest.raises(official_weights.UnsafePickleError,
                     match='Refusing to load'):
    official_weights.load_pickle(payload)
  assert not marker.exists()


def test_functions_of_allowed_libraries_are_refused_too():
  payload = pickle.dumps(_Call(jax.numpy.asarray, [1]), protocol=2)
  with pytest.raises(official_weights.UnsafePickleError, match='jax'):
    official_weights.load_pickle(payload)


# --- Arrays: plain numbers or nothing -----------------------------------

def _array_pickle(dtype_args, dtype_state, shape, raw, fortran=False):
  """The opcodes numpy's ndarray.__reduce__ produces, with any dtype
  arguments / state, shape and raw bytes (as a crafted file can)."""
  reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]

  class Dtype:
    def __reduce__(self):
      return (np.dtype, dtype_args, dtype_state)

  class Array:
    def __reduce__(self):
      return (reconstruct, (np.ndarray, (0,), b'b'),
              (1, shape, Dtype(), fortran, raw))
  return _dumps({'a': Array()})


PLAIN = (3, '<', None, None, None, -1, -1, 0)


def test_plain_arrays_of_every_numeric_kind_load(tmp_path):
  for value in (np.arange(6, dtype=np.float32).reshape(2, 3),
                np.asfortranarray(np.arange(6.0).reshape(2, 3)),
                np.array([True, False]), np.arange(3, dtype='>i4'),
                np.array([1 + 2j], np.complex64), np.array(7, np.uint8),
                np.zeros((0, 4), np.float16)):
    for dump in (pickle.dumps, dill.dumps):
      got = official_weights.load_pickle(dump({'a': value}, protocol=2))['a']
      got = official_weights._plain(got)  # pylint: disable=protected-access
      assert got.dtype == value.dtype and got.shape == value.shape
      np.testing.assert_array_equal(got, value)


def test_a_structured_object_dtype_is_refused_not_dereferenced():
  """Only allow-listed names: a structured dtype with an object field whose
  raw bytes would be read as pointers (a segfault in numpy) is refused."""
  state = (3, '|', None, ('f0',), {'f0': (np.dtype('O'), 0)}, 8, 1, 0)
  payload = _array_pickle(('V8', False, True), state, (4,), b'A' * 32)
  with pytest.raises(official_weights.UnsafePickleError):
    official_weights._plain(official_weights.load_pickle(payload))  # pylint: disable=protected-access


def test_array_fuzz_loads_plain_numbers_or_refuses():
  """Many generated dtype / state / size combinations (run in a child
  process, so a crash would show as a signal, not kill the suite): every
  one either loads as a plain numeric array of the declared size or is
  refused with UnsafePickleError."""
  script = r'''
import itertools, pickle, sys, numpy as np
sys.path.insert(0, sys.argv[1])
from test_official_weights import _array_pickle, PLAIN
from byol_jax import official_weights as ow
names = ['f4', 'i8', 'b1', 'u2', 'c8', 'O', 'O8', 'V8', 'V16', 'S4', 'U2',
         'M8', 'm8', ('f4', (2,)), [('a', 'O')], 'f4,O', object, 7, b'f4']
states = [PLAIN, (3, '>', None, None, None, -1, -1, 0),
          (3, '|', None, ('f0',), {'f0': (np.dtype('O'), 0)}, 8, 1, 0),
          (3, '|', (np.dtype('O'), (1,)), None, None, 8, 1, 0),
          (3, '<', None, None, None, 8, 1, 63), (3, '<', None, None, None,
          -1, -1, 0, {'k': 1}), None, (4,), 'x']
shapes = [(8,), (2,), (1, 2, 3), (0,), (2, 2)]
loaded = refused = 0
for name, state, shape in itertools.product(names, states, shapes):
  for raw in [b'\x01' * n for n in (0, 1, 2, 4, 7, 8, 16, 48)] + ['str']:
    try:
      payload = _array_pickle((name, False, True), state, shape, raw)
    except Exception:  # Not even picklable: nothing to test.
      continue
    try:
      a = ow._plain(ow.load_pickle(payload))['a']
    except ow.UnsafePickleError:
      refused += 1
      continue
    assert isinstance(a, np.ndarray) and a.dtype.kind in 'biufc', a
    assert a.nbytes == len(raw) and a.shape == shape
    loaded += 1
print(loaded, refused)
'''
  r = subprocess.run([sys.executable, '-c', script, os.path.dirname(__file__)],
                     capture_output=True, text=True, timeout=300,
                     cwd=os.path.dirname(__file__) + '/..',
                     env={**os.environ, 'PYTHONPATH': os.path.dirname(
                         __file__) + '/..'})
  assert r.returncode == 0, r.stderr[-3000:]
  loaded, refused = map(int, r.stdout.split())
  assert loaded >= 20 and refused >= 4000, (loaded, refused)


def test_evaluate_reads_an_official_file(official_file, tmp_path):
  """`python -m byol_jax.evaluate --checkpoint=pretrain_res50x1.pkl` loads
  the file; evaluating it on 1-channel images is refused with a message
  before anything is compiled or written."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from byol_jax import config_lib  # pylint: disable=g-import-not-at-top
  from byol_jax.evaluation import protocols  # pylint: disable=g-import-not-at-top
  path, _, _ = official_file
  c = config_lib.eval_base_config()
  config_lib.use_dataset(c, 'fashion_mnist')
  c.batch_size, c.eval.batch_size = 8, 8
  with pytest.raises(validation.ConfigError,
                     match='pretrained on 3-channel images'):
    protocols.run(ml_collections.ConfigDict(c), 'linear', str(path))
  assert not (path.parent / 'results').exists()


def test_malformed_files_get_a_message_not_a_raw_error(tmp_path):
  """Safe to unpickle, but not a BYOL checkpoint: a clear error naming the
  file, never KeyError / RecursionError from deep inside."""
  params, state = official_layout(np.random.RandomState(1), **DILL034_KWARGS)
  loop = []
  loop.append(loop)
  cases = {
      'no_state.pkl': (dill.dumps({'experiment_state': {
          'online_params': params}}, protocol=2), 'no target_params mapping'),
      'list.pkl': (dill.dumps([1, 2], protocol=2), 'no experiment_state'),
      'loop.pkl': (pickle.dumps({'experiment_state': loop}, protocol=2),
                   'RecursionError'),
      'noise.pkl': (b'\x80\x02' + bytes(range(200)), 'not a readable pickle'),
      'empty.pkl': (b'', 'not a readable pickle'),
  }
  for name, (data, message) in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(official_weights.NotAnOfficialCheckpointError,
                       match=message):
      official_weights.load(str(tmp_path / name))
  nan = {k: {leaf: v * np.nan for leaf, v in p.items()} if 'conv_0' in k
         else p for k, p in params.items()}
  write_official_checkpoint(tmp_path / 'nan.pkl', nan, state, dill.dump)
  with pytest.raises(official_weights.NotAnOfficialCheckpointError,
                     match='non-finite'):
    official_weights.load(str(tmp_path / 'nan.pkl'))
