r"""Export a pretrained encoder as a safe, self-describing file.

  python -m byol_jax.export --checkpoint=runs/byol_fashion_mnist \
      --out=encoder.npz                      # for JAX: byol_jax.load_encoder
  python -m byol_jax.export --checkpoint=pretrain_res50x1.pkl \
      --format=torchvision --out=byol_r50_torchvision.npz   # for PyTorch

The file is a numpy .npz of plain arrays (read with allow_pickle=False: no
code runs on load) plus one '__metadata__' JSON string: the model config, the
source checkpoint and step, and the layout. `--format=torchvision` names and
lays out the arrays as torchvision's ResNet state dict (OIHW kernels,
'layer1.0.conv1.weight', 'bn1.running_mean', ...), written without torch:

  import numpy as np, torch, torchvision
  arrays = np.load('byol_r50_torchvision.npz', allow_pickle=False)
  model = torchvision.models.resnet50()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()
                         if k != '__metadata__'}, strict=False)  # no 'fc'

Padding: our convolutions use TF 'SAME' padding (as the official BYOL
code): stride-2 layers on even sizes pad less before than after, where
PyTorch pads symmetrically. torchvision's model computes the same features
only with the same padding: `byol_jax.export.tf_same_padding(model)`
switches it (tested against our encoder in tests/test_export.py when torch
is installed). Without it the features shift by a pixel at each stride-2
layer (the official ResNet-50's 74.6% needs 'SAME').
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from byol_jax import console, networks

FORMAT = 'byol_jax.encoder/v1'


class EncoderFileError(console.UserError, ValueError):
  """An .npz that is not a loadable byol_jax encoder export."""


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), np.asarray(v)


def _unflatten(items):
  out = {}
  for path, value in items:
    node = out
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return out


def torchvision_state_dict(model, variables) -> dict[str, np.ndarray]:
  """Our encoder variables under torchvision ResNet names and layouts."""
  kind, stages = networks.RESNET_LAYOUTS[model.depth]
  params, stats = variables['params'], variables['batch_stats']
  out = {}

  def conv(src, dst):
    out[dst + '.weight'] = np.transpose(params[src]['kernel'], (3, 2, 0, 1))

  def bn(src_path, dst):
    p, s = params, stats
    for k in src_path:
      p, s = p[k], s[k]
    out[dst + '.weight'], out[dst + '.bias'] = p['scale'], p['bias']
    out[dst + '.running_mean'], out[dst + '.running_var'] = s['mean'], s['var']
    out[dst + '.num_batches_tracked'] = np.array(0, np.int64)

  conv('stem_conv', 'conv1')
  bn(('stem_bn',), 'bn1')
  convs = 3 if kind == 'bottleneck' else 2
  for i, blocks in enumerate(stages):
    for j in range(blocks):
      src, dst = f'stage{i + 1}_block{j + 1}', f'layer{i + 1}.{j}'
      block = params[src]
      for k in range(convs):
        out[f'{dst}.conv{k + 1}.weight'] = np.transpose(
            block[f'Conv_{k}']['kernel'], (3, 2, 0, 1))
        bn((src, f'BatchNorm_{k}'), f'{dst}.bn{k + 1}')
      if 'shortcut_conv' in block:
        out[f'{dst}.downsample.0.weight'] = np.transpose(
            block['shortcut_conv']['kernel'], (3, 2, 0, 1))
        bn((src, 'shortcut_bn'), f'{dst}.downsample.1')
  return {k: np.asarray(v) for k, v in out.items()}


def export(source: str, out: str, layout: str = 'flax',
           overwrite: bool = False) -> str:
  """Writes the encoder of `source` to `out` (.npz); refuses to replace an
  existing file unless `overwrite`."""
  if layout not in ('flax', 'torchvision'):
    raise ValueError(f"format must be 'flax' or 'torchvision', not "
                     f'{layout!r}.')
  if os.path.islink(out):  # Even dangling: writing would follow it.
    raise FileExistsError(f'{out} is a symbolic link; give --out a plain '
                          'path.')
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f'{out} exists; choose another --out (or pass '
                          '--overwrite).')
  from byol_jax import pretrained  # pylint: disable=g-import-not-at-top
  source_net = pretrained.load(source)
  model, step = source_net.model, source_net.step
  variables = jax.device_get(source_net.encoder_variables)
  if layout == 'flax':
    arrays = {'/'.join(path): v for path, v in _flatten(variables)}
  else:
    if model.stem != 'imagenet':
      raise ValueError(f'model.stem={model.stem!r}: torchvision ResNets have '
                       "the 'imagenet' stem (7x7/2 conv + max-pool) only.")
    if (model.get('official_shortcuts', False)
        and networks.RESNET_LAYOUTS[model.depth][0] == 'basic'):
      raise ValueError(
          f'ResNet-{model.depth} with official shortcuts (a projection in '
          "layer1's first block) has no torchvision equivalent; use "
          '--format=flax.')
    arrays = torchvision_state_dict(model, variables)
  d = source_net.config['dataset']
  metadata = {'format': FORMAT, 'layout': layout, 'model': model.to_dict(),
              'source': os.path.abspath(source), 'step': step,
              'padding': 'TF SAME (see byol_jax/export.py)',
              # What the encoder was trained on: (N, S, S, C) images in
              # [0, 1], then (x - mean) / std per channel.
              'preprocessing': {
                  'image_size': int(d['image_size']),
                  'channels': int(d['num_channels']),
                  'mean': [float(v) for v in d['mean']],
                  'std': [float(v) for v in d['std']],
                  'eval_crop_fraction': float(d['eval_crop_fraction'])}}
  with open(out, 'wb') as f:
    np.savez(f, __metadata__=np.array(json.dumps(metadata)), **arrays)
  return out


def read_metadata(path: str) -> dict:
  with np.load(path, allow_pickle=False) as f:
    return json.loads(str(f['__metadata__']))


def load_encoder(path: str, raw_images: bool = False
                 ) -> tuple[Callable, dict]:
  """(apply_fn, variables) of an exported encoder (flax layout):
  apply_fn(variables, images) -> features (N, F), BatchNorm in inference
  mode. Nothing in the file is executed.

  images: (N, H, W, C) normalised as in training ((x - mean) / std with the
  metadata's 'preprocessing'); with raw_images=True, (N, S, S, C) uint8 or
  float in [0, 1] at the export's image size S (resize / centre-crop them
  first), normalised by apply_fn. Exports from before 'preprocessing' was
  recorded load with a warning, for normalised images only."""
  try:
    with np.load(path, allow_pickle=False) as f:
      metadata = json.loads(str(f['__metadata__']))
      variables = _unflatten((k.split('/'), f[k]) for k in f.files
                             if k != '__metadata__')
  except (KeyError, ValueError, OSError) as e:  # No/odd metadata, not .npz.
    raise EncoderFileError(f'{path} is not a byol_jax encoder export '
                           f'({type(e).__name__}: {e}).') from None
  meta = metadata if isinstance(metadata, dict) else {}
  if (meta.get('format') != FORMAT or meta.get('layout') != 'flax'
      or not isinstance(meta.get('model'), dict)):
    raise EncoderFileError(
        f'{path} is not a flax-layout byol_jax encoder (metadata format '
        f'{meta.get("format", "?")!r}, layout {meta.get("layout", "?")!r}).')
  m = ml_collections.ConfigDict(meta['model'])
  try:
    encoder = networks.build_encoder(m, compute_dtype='float32')
    channels = variables['params']['stem_conv']['kernel'].shape[2]
    networks.check_variables(encoder, variables, (1, 32, 32, channels))
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise EncoderFileError(
        f'{path}: its arrays are not the ResNet its metadata describes '
        f'({m.get("depth")}, width {m.get("width")}): {e}') from None
  prep = meta.get('preprocessing')
  if prep is None:
    if raw_images:
      raise EncoderFileError(
          f'{path} was exported before exports recorded their '
          'preprocessing: pass normalised images (raw_images=False), '
          'normalised as the pretraining config did, or export it again.')
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.warning('%s records no preprocessing (an older export): '
                    'normalise images as its pretraining config did.', path)

  @jax.jit
  def forward(variables, images):
    if raw_images:
      if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 255.0
      images = ((images - jnp.asarray(prep['mean'], jnp.float32))
                / jnp.asarray(prep['std'], jnp.float32))
    return encoder.apply(variables, images.astype(jnp.float32), train=False)

  def apply_fn(variables, images):
    shape = tuple(getattr(images, 'shape', ()))
    want = (f'(N, {prep["image_size"]}, {prep["image_size"]}, {channels})'
            if raw_images else f'(N, H, W, {channels})')
    if (len(shape) != 4 or shape[-1] != channels or (raw_images and shape[
        1:3] != (prep['image_size'],) * 2)):
      raise ValueError(f'images of shape {shape}: this encoder takes {want}'
                       + (' (resize or centre-crop them first)'
                          if raw_images and len(shape) == 4 else '')
                       + (' (add the channel axis: images[..., None])'
                          if len(shape) == 3 and channels == 1 else '')
                       + '.')
    return forward(variables, images)
  return apply_fn, variables


def tf_same_padding(model):
  """Switches a torchvision ResNet to TF 'SAME' padding in place: its
  stride-2 convolutions (kernel > 1) and max-pool pad (total // 2) before
  and the rest after, computed from each input's size, as our encoders and
  the official BYOL code do. Needs torch (never a dependency of byol_jax).
  Returns the model."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def pads(x, k, s):
    out = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: W then H.
      total = max((-(-size // s) - 1) * s + k - size, 0)
      out += [total // 2, total - total // 2]
    return out

  def conv_hook(module, inputs):
    return (F.pad(inputs[0], pads(inputs[0], module.kernel_size[0],
                                  module.stride[0])),)

  def pool_hook(module, inputs):
    return (F.pad(inputs[0], pads(inputs[0], module.kernel_size,
                                  module.stride), value=float('-inf')),)

  for m in model.modules():
    if (isinstance(m, torch.nn.Conv2d) and m.stride[0] > 1
        and m.kernel_size[0] > 1):
      m.padding = (0, 0)
      m.register_forward_pre_hook(conv_hook)
    elif isinstance(m, torch.nn.MaxPool2d):
      m.padding = 0
      m.register_forward_pre_hook(pool_hook)
  return model


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  path = export(f.checkpoint, f.out, f.format, f.overwrite)
  meta = read_metadata(path)
  print(f'Wrote the {meta["layout"]}-layout encoder of step {meta["step"]} '
        f'(ResNet-{meta["model"]["depth"]} x{meta["model"]["width"]:g}) to '
        f'{path}')


def run_cli():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('checkpoint', None, 'A pretraining workdir or step '
                      'directory, or an official BYOL .pkl file.')
  flags.DEFINE_string('out', None, 'Output .npz path.')
  flags.DEFINE_enum('format', 'flax', ['flax', 'torchvision'],
                    'Array names and layouts: ours, or torchvision ResNet.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --out file.')
  flags.mark_flags_as_required(['checkpoint', 'out'])
  from byol_jax import console  # pylint: disable=g-import-not-at-top
  console.run(main, sys.modules[__name__])


if __name__ == '__main__':
  run_cli()
