"""DeepMind's released BYOL checkpoints (Haiku), loaded safely into our flax
networks.

The files (`pretrain_res50x1.pkl`, `pretrain_res200x2.pkl`, the 300-epoch
ablations) are pickles (dill, protocol 2) of

  dict(experiment_state=_ByolExperimentState(online_params, target_params,
       online_state, target_state, opt_state), step=..., rng=...)

with Haiku parameter dicts ('res_net50/~/block_group_0/~/block_0/~/conv_0'
-> {'w': HWIO}; BatchNorm 'scale' / 'offset' of shape (1, 1, 1, C)) and
BatchNorm statistics in the state under '<bn>/~/mean_ema' / 'var_ema'
{'average', 'hidden', 'counter'} (inference uses 'average').

A pickle can run any code while it loads. `load_pickle` never imports what a
file names: it rebuilds numpy arrays and plain containers, gives every class
of the byol / haiku / optax / jax modules an inert stand-in, and refuses
everything else (os.system, builtins.eval, ...) with `UnsafePickleError`.
Both encodings of the official checkpointer (`byol/utils/checkpointing.py`,
`dill.dump(..., protocol=2)`) are read:
  - dill >= 0.3.6 wraps each array as `dill._dill._create_array(numpy
    _reconstruct, args, state, npdict)`: accepted only with numpy's
    `_reconstruct` as the function and no instance dict;
  - dill 0.3.1-0.3.4 reach numpy through `_get_attr(_import_module(name),
    attr)`: `_import_module` only of numpy's own modules and `_codecs`,
    `_get_attr` only of numpy's reconstructors and `_codecs.encode`.
Arrays are built with np.frombuffer from plain numeric dtypes (bool, int,
uint, float, complex) and exactly shape x itemsize bytes, so a crafted dtype
(object or structured fields read as pointers) cannot crash the process.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from typing import Any, BinaryIO, Mapping

import ml_collections
import numpy as np

from byol_jax import console, networks

# Modules whose classes may appear in the official files: they get stand-ins
# (never imported). Anything outside these and the numpy / container
# reconstructors below is refused.
_STAND_IN_MODULES = ('byol', 'haiku', 'optax', 'jax', 'jaxlib', 'chex',
                     'tree', '__main__')

# Field names of the named tuples pickled by reference (positional args).
_KNOWN_FIELDS = {
    '_ByolExperimentState': ('online_params', 'target_params', 'online_state',
                             'target_state', 'opt_state'),
}


class UnsafePickleError(console.UserError, pickle.UnpicklingError):
  """The file asks to run something other than rebuilding data."""


class StandIn(dict):
  """Inert replacement for a class a pickle references: it records its
  constructor arguments (`args`), its state (`state`), and, for mappings,
  its items (it is a dict). Nothing of the original class runs."""
  _module = ''
  _name = ''

  def __new__(cls, *args, **kwargs):
    obj = super().__new__(cls)
    obj.args, obj.state = args, kwargs or None
    return obj

  def __init__(self, *args, **kwargs):  # pylint: disable=super-init-not-called
    del args, kwargs

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f'<stand-in {self._module}.{self._name} args={len(self.args)}>'


def _stand_in(module: str, name: str) -> type:
  return type(name, (StandIn,), {'_module': module, '_name': name,
                                 '__module__': 'byol_jax.official_weights'})


def _namedtuple(name, fieldnames, modulename=None, defaults=None):
  """dill's `_create_namedtuple` (namedtuples pickled by value)."""
  del defaults
  cls = _stand_in(modulename or '', name)
  cls._fields = tuple(fieldnames)  # pylint: disable=protected-access
  return cls


# numpy's own modules, as pickles name them: numpy 1.x wrote numpy.core,
# numpy 2 writes numpy._core; dill 0.3.1-0.3.4 import the C module
# (_multiarray_umath) by name.
_NUMPY_MODULES = ('numpy.core.multiarray', 'numpy._core.multiarray',
                  'numpy.core._multiarray_umath',
                  'numpy._core._multiarray_umath')
# dtype kinds of plain numbers: bool, signed and unsigned ints, floats,
# complex. Object, void (structured / subarray), string and datetime dtypes
# are refused: an object dtype would read raw bytes as pointers.
_PLAIN_KINDS = 'biufc'


def _refuse(what: str):
  raise UnsafePickleError(
      f'Refusing to load {what}: official BYOL checkpoints hold only plain '
      'numeric arrays.')


class _Dtype:
  """A numpy dtype named by the file, checked before numpy sees it: plain
  numeric only, and a `__setstate__` that may only set the byte order."""

  def __init__(self, name, align=False, copy=True):
    del align, copy
    if not isinstance(name, str) or len(name) > 8:
      _refuse(f'dtype {name!r}')
    try:
      dtype = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
      _refuse(f'dtype {name!r}')
    if dtype.kind not in _PLAIN_KINDS or dtype.fields or dtype.subdtype:
      _refuse(f'dtype {name!r}')
    self.dtype = dtype

  def __setstate__(self, state):
    # (version, byteorder, subdescr, names, fields, elsize, alignment, flags
    # [, metadata]) for plain dtypes is (3, '<', None, None, None, -1, -1, 0).
    if (not isinstance(state, tuple) or len(state) not in (8, 9)
        or state[1] not in ('<', '>', '|', '=')
        or state[2:5] != (None, None, None) or state[5:8] != (-1, -1, 0)
        or (len(state) == 9 and state[8] is not None)):
      _refuse(f'dtype state {state!r:.200}')
    if state[1] in '<>':
      self.dtype = self.dtype.newbyteorder(state[1])


def _dtype_of(value) -> np.dtype:
  if not isinstance(value, _Dtype):
    _refuse(f'an array whose dtype is {type(value).__name__}')
  return value.dtype


class _Array:
  """An ndarray the file asks for (numpy's `_reconstruct(ndarray, (0,),
  b'b')`), built by `__setstate__` from its shape, dtype and raw bytes with
  np.frombuffer: the bytes must be exactly shape x itemsize."""

  def __init__(self):
    self.value = None

  def __setstate__(self, state):
    if (not isinstance(state, tuple) or len(state) != 5
        or not isinstance(state[1], tuple) or not isinstance(state[4], bytes)
        or not all(isinstance(d, int) and 0 <= d < 2**40 for d in state[1])):
      _refuse(f'array state {type(state).__name__}')
    _, shape, dtype, fortran, raw = state
    dtype = _dtype_of(dtype)
    size = int(np.prod(shape, dtype=np.float64))
    if size * dtype.itemsize != len(raw):
      _refuse(f'an array of shape {shape} {dtype} with {len(raw)} bytes')
    self.value = np.frombuffer(raw, dtype).reshape(
        shape, order='F' if fortran else 'C').copy()


class _NdarrayClass:
  """Stands for numpy.ndarray as an argument of `_reconstruct`; calling it
  (numpy.ndarray(shape, dtype, buffer)) is refused."""

  def __new__(cls, *args, **kwargs):
    del args, kwargs
    _refuse('a call of numpy.ndarray')


def _reconstruct(cls, shape, typecode):
  """numpy's `_reconstruct`, for a plain empty ndarray only."""
  if cls is not _NdarrayClass or shape != (0,) or typecode not in (b'b', 'b'):
    _refuse(f'_reconstruct({cls!r:.80}, {shape!r:.80}, {typecode!r:.20})')
  return _Array()


def _scalar(dtype, data=None):
  """numpy's `scalar`: a plain numeric scalar from exactly itemsize bytes."""
  dtype = _dtype_of(dtype)
  if not isinstance(data, bytes) or len(data) != dtype.itemsize:
    _refuse(f'a {dtype} scalar from {type(data).__name__}')
  return np.frombuffer(data, dtype)[0]


def _create_array(f, args, state, npdict=None):
  """dill >= 0.3.6's `_create_array`: only with numpy's `_reconstruct` as its
  function, and no instance dict (plain ndarrays have none)."""
  if f is not _reconstruct or not isinstance(args, tuple) or npdict:
    _refuse(f'dill._create_array with {getattr(f, "__name__", f)!r:.80}')
  array = _reconstruct(*args)
  array.__setstate__(state)
  return array


def _jax_array(fun, args, arr_state, aval_state):
  """jax.Array's pickle reconstructor, as a numpy array."""
  del aval_state
  if fun is not _reconstruct:
    _refuse('jax._reconstruct_array with a function other than numpy\'s')
  value = fun(*args)
  value.__setstate__(arr_state)
  return value


class _Module(str):
  """A module that dill 0.3.1-0.3.4 import by name (`_import_module`); only a
  token for `_get_attr`, never imported."""


def _import_module(name, safe=False):
  del safe
  if name not in _NUMPY_MODULES + ('numpy', '_codecs'):
    _refuse(f'dill._import_module({name!r:.80})')
  return _Module(name)


def _get_attr(module, name):
  """dill 0.3.1-0.3.4's `_get_attr`: only to reach numpy's reconstructors
  and `_codecs.encode` in the modules `_import_module` gave."""
  if not isinstance(module, _Module) or not isinstance(name, str):
    _refuse(f'dill._get_attr({module!r:.80}, {name!r:.80})')
  found = _ALLOWED.get((str(module), name))
  if found is None:
    _refuse(f'dill._get_attr({module!r:.80}, {name!r:.80})')
  return found


def _empty_bytes(*args):
  """bytes() as protocol 2 writes b'' (non-empty bytes use _codecs.encode)."""
  if args:
    _refuse(f'bytes{args!r:.80}')
  return b''


def _load_type(name):
  """dill's `_load_type`, which names builtin types: `bytes` only (dill
  writes b'', the data of an empty array, as bytes())."""
  if name != 'bytes':
    _refuse(f'dill._load_type({name!r:.80})')
  return _empty_bytes


def _latin1(text, encoding='latin1'):
  """_codecs.encode as protocol 2 uses it for bytes: latin-1 only."""
  if encoding not in ('latin1', 'latin-1') or not isinstance(text, str):
    raise UnsafePickleError(f'_codecs.encode with {encoding!r} refused.')
  return text.encode('latin1')


def _reconstructor(cls, base, state):
  """copyreg._reconstructor, for stand-ins and plain bases only."""
  if not (isinstance(cls, type) and issubclass(cls, StandIn)) or base not in (
      object, dict):
    raise UnsafePickleError(f'copyreg._reconstructor of {cls!r} refused.')
  obj = StandIn.__new__(cls)
  if state is not None:
    obj.state = state
  return obj


_ALLOWED = {
    **{(m, '_reconstruct'): _reconstruct for m in _NUMPY_MODULES},
    **{(m, 'scalar'): _scalar for m in _NUMPY_MODULES},
    ('numpy', 'ndarray'): _NdarrayClass,
    ('numpy', 'dtype'): _Dtype,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'dict'): dict, ('builtins', 'list'): list,
    ('builtins', 'tuple'): tuple, ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset, ('builtins', 'object'): object,
    ('__builtin__', 'object'): object,
    ('copyreg', '_reconstructor'): _reconstructor,
    ('copy_reg', '_reconstructor'): _reconstructor,
    ('_codecs', 'encode'): _latin1,
    ('__builtin__', 'bytes'): _empty_bytes, ('builtins', 'bytes'): _empty_bytes,
    ('dill._dill', '_load_type'): _load_type,
    ('dill._dill', '_create_namedtuple'): _namedtuple,
    ('dill._dill', '_create_array'): _create_array,
    ('dill._dill', '_import_module'): _import_module,
    ('dill._dill', '_get_attr'): _get_attr,
    ('jax._src.array', '_reconstruct_array'): _jax_array,
}


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    found = _ALLOWED.get((module, name))
    if found is not None:
      return found
    # Classes (CamelCase) of the known libraries get stand-ins; their
    # functions do not (a pickle can call any function it names).
    if (module.split('.')[0] in _STAND_IN_MODULES
        and re.fullmatch(r'_?[A-Z][A-Za-z0-9_]*', name)):
      return _stand_in(module, name)
    raise UnsafePickleError(
        f'Refusing to load {module}.{name}: this file asks to call or build '
        'something other than arrays and containers, which could run code. '
        'Official BYOL checkpoints never do; get the file from its source '
        '(https://github.com/deepmind/deepmind-research/tree/master/byol).')


def load_pickle(f: BinaryIO | bytes) -> Any:
  """Unpickles a checkpoint without executing code from it."""
  if isinstance(f, (bytes, bytearray)):
    f = io.BytesIO(f)
  return _RestrictedUnpickler(f).load()


def _plain(obj):
  """Stand-ins and containers -> dicts / tuples / numpy arrays."""
  if isinstance(obj, _Array):
    if obj.value is None:
      _refuse('an array without data')
    return obj.value
  if isinstance(obj, StandIn):
    fields = getattr(obj, '_fields', None) or _KNOWN_FIELDS.get(obj._name)  # pylint: disable=protected-access
    if len(obj):  # A mapping (items set through SETITEMS).
      return {k: _plain(v) for k, v in obj.items()}
    if fields and len(obj.args) == len(fields):
      return {f: _plain(a) for f, a in zip(fields, obj.args)}
    if len(obj.args) == 1 and isinstance(obj.args[0], Mapping):
      return _plain(obj.args[0])
    if isinstance(obj.state, Mapping):
      inner = [v for v in obj.state.values() if isinstance(v, Mapping)]
      return _plain(inner[0]) if len(inner) == 1 else _plain(dict(obj.state))
    return tuple(_plain(a) for a in obj.args)
  if isinstance(obj, Mapping):
    return {k: _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_plain(v) for v in obj) if not hasattr(
        obj, '_fields') else tuple(_plain(v) for v in obj)
  return obj


class NotAnOfficialCheckpointError(console.UserError, ValueError):
  """The file unpickles safely but is not laid out as BYOL's checkpoints."""


_STATE_FIELDS = ('online_params', 'target_params', 'online_state',
                 'target_state')


def read_checkpoint(path: str) -> dict:
  """The file's content as plain dicts of numpy arrays:
  {'experiment_state': {'online_params', 'online_state', ...}, 'step', ...}."""
  try:
    with open(path, 'rb') as f:
      data = _plain(load_pickle(f))
  except (RecursionError, MemoryError) as e:  # Self-referencing / huge.
    raise NotAnOfficialCheckpointError(
        f'{path} is not an official BYOL checkpoint ({type(e).__name__} '
        'while reading it).') from None
  except (EOFError, pickle.UnpicklingError, ValueError, TypeError,
          IndexError, KeyError, AttributeError) as e:
    if isinstance(e, UnsafePickleError):
      raise
    raise NotAnOfficialCheckpointError(
        f'{path} is not a readable pickle ({type(e).__name__}: {e}).') from None
  state = data.get('experiment_state') if isinstance(data, dict) else None
  if not isinstance(state, dict):
    raise NotAnOfficialCheckpointError(
        f'{path} is not an official BYOL checkpoint (no experiment_state).')
  for name in _STATE_FIELDS:
    if not isinstance(state.get(name), dict):
      raise NotAnOfficialCheckpointError(
          f'{path} is not an official BYOL checkpoint: experiment_state has '
          f'no {name} mapping.')
  return data


_RESNET = re.compile(r'res_net(\d+)')
_BLOCK = re.compile(r'block_group_(\d+)/~/block_(\d+)/~/(\w+)')


def infer_model(params: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Depth and width of the encoder, and head sizes, from the Haiku tree."""
  names = list(params)
  depths = {int(m.group(1)) for n in names for m in [_RESNET.match(n)] if m}
  if len(depths) != 1:
    raise ValueError(f'Expected one res_netN encoder, found {sorted(depths)}.')
  depth = depths.pop()
  prefix = f'res_net{depth}/~/'
  stem = next(n for n in names if n.startswith(prefix + 'initial_conv'))
  width = params[stem]['w'].shape[-1] / 64
  proj = params['projector/linear']['w'].shape[1]
  out = params['projector/linear_1']['w'].shape[1]
  pred = params.get('predictor/linear', {}).get('w')
  return ml_collections.ConfigDict(dict(
      depth=depth, width=width, stem='imagenet', head='byol',
      projector_hidden=(proj,), predictor_hidden=(
          pred.shape[1] if pred is not None else proj,),
      projection_dim=out, use_predictor=pred is not None,
      compute_dtype='float32',
      # Every stage's first block has a projection shortcut (Haiku's
      # BlockGroup); for ResNet-18/34 this is not torchvision's layout.
      official_shortcuts=True))


def _bn_name(haiku: str) -> str:
  if haiku == 'shortcut_batchnorm':
    return 'shortcut_bn'
  return 'BatchNorm_' + haiku.rsplit('_', 1)[1]


def _conv_name(haiku: str) -> str:
  if haiku == 'shortcut_conv':
    return 'shortcut_conv'
  return 'Conv_' + haiku.rsplit('_', 1)[1]


def _flax_path(module: str, depth: int) -> tuple[str, ...]:
  """Haiku module name -> our flax module path (without the leaf)."""
  prefix = f'res_net{depth}/~/'
  if module.startswith(prefix):
    rest = module[len(prefix):]
    if rest.startswith('initial_conv'):
      return ('encoder', 'stem_conv')
    if rest == 'initial_batchnorm':
      return ('encoder', 'stem_bn')
    m = _BLOCK.fullmatch(rest)
    if m:
      group, block, layer = int(m.group(1)), int(m.group(2)), m.group(3)
      name = _bn_name(layer) if 'batchnorm' in layer else _conv_name(layer)
      return ('encoder', f'stage{group + 1}_block{block + 1}', name)
  head = {'linear': 'linear1', 'batch_norm': 'bn1', 'linear_1': 'linear_out'}
  for net in ('projector', 'predictor'):
    if module.startswith(net + '/') and module[len(net) + 1:] in head:
      return (net, head[module[len(net) + 1:]])
  if module == 'classifier':
    return ('probe',)
  raise ValueError(f'Unknown module {module!r} in the official checkpoint.')


_LEAF = {'w': 'kernel', 'b': 'bias', 'scale': 'scale', 'offset': 'bias'}


def _set(tree: dict, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def convert(params: Mapping[str, Any], state: Mapping[str, Any],
            depth: int) -> dict:
  """Haiku params + state -> our flax variables {'params', 'batch_stats'}
  (BatchNorm scale/offset/statistics reshaped from (1, ..., C) to (C,))."""
  out = {'params': {}, 'batch_stats': {}}
  for module, leaves in params.items():
    path = _flax_path(module, depth)
    for leaf, value in leaves.items():
      value = np.asarray(value, np.float32)
      if leaf in ('scale', 'offset'):
        value = value.reshape(-1)
      _set(out['params'], path + (_LEAF[leaf],), value)
  for name, ema in state.items():
    module, stat = name.rsplit('/~/', 1)
    if stat not in ('mean_ema', 'var_ema'):
      continue
    _set(out['batch_stats'], _flax_path(module, depth)
         + ('mean' if stat == 'mean_ema' else 'var',),
         np.asarray(ema['average'], np.float32).reshape(-1))
  return out


def load(path: str, which: str = 'online'
         ) -> tuple[ml_collections.ConfigDict, dict, int]:
  """(model config, flax variables of our SSLNetwork, training step) of an
  official checkpoint; `which` is 'online' or 'target' (the target has no
  predictor or classifier).

  The final projector / predictor layers have no bias in the official code;
  ours do, and get zero biases (the same function).
  """
  if which not in ('online', 'target'):
    raise ValueError(f"which={which!r}: use 'online' or 'target'.")
  data = read_checkpoint(path)
  try:
    model, variables = _convert_state(data['experiment_state'], which)
    network = build(model, variables)
    step = int(np.asarray(data.get('step', 0)))
  except (KeyError, ValueError, AttributeError, TypeError, IndexError) as e:
    raise NotAnOfficialCheckpointError(
        f'{path} is not laid out as an official BYOL checkpoint '
        f'({type(e).__name__}: {e}).') from None
  _check_variables(network, variables, path)
  return model, variables, step


def _convert_state(state, which: str):
  params, bn_state = state[f'{which}_params'], state[f'{which}_state']
  model = infer_model(state['online_params'])
  if which == 'target':  # The target's predictor is never used (BYOL 3.1).
    unused = ('predictor/', 'classifier')
    params = {k: v for k, v in params.items() if not k.startswith(unused)}
    bn_state = {k: v for k, v in bn_state.items()
                if not k.startswith(unused)}
  variables = convert(params, bn_state, model.depth)
  if which == 'target':  # No predictor; no classifier: a zero probe.
    model.use_predictor = False
    classes = state['online_params']['classifier']['w'].shape
    variables['params']['probe'] = {
        'kernel': np.zeros(classes, np.float32),
        'bias': np.zeros(classes[1:], np.float32)}
  for net in ('projector', 'predictor'):
    layer = variables['params'].get(net, {}).get('linear_out')
    if layer is not None and 'bias' not in layer:
      layer['bias'] = np.zeros(layer['kernel'].shape[1], np.float32)
  return model, variables


def _check_variables(network: networks.SSLNetwork, variables: dict,
                     path: str) -> None:
  """The converted leaves are exactly the network's (flax ignores extra
  leaves without a word, which would run another network), finite."""
  try:
    networks.check_variables(network, variables, (1, 32, 32, 3))
  except networks.VariablesMismatchError as e:
    raise NotAnOfficialCheckpointError(
        f'{path} does not convert to the ResNet-{network.encoder.depth} it '
        f'describes: {e} Is it an official BYOL checkpoint?') from None


def build(model: ml_collections.ConfigDict, variables: dict
          ) -> networks.SSLNetwork:
  """Our network for converted variables (ImageNet: 1000 classes)."""
  num_classes = variables['params']['probe']['kernel'].shape[1]
  return networks.build_network(model, num_classes)
