"""Features of a frozen encoder, sharded over the mesh: the jitted
eval-mode forwards, extraction over a split (padding dropped), and the
batches that train a linear head on extracted features."""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from byol_jax import input_pipeline, parallel


def make_eval_fn(network, mesh: Optional[Mesh] = None):
  """Jitted eval-mode forward: (variables, images) -> {'embedding': (N, C),
  'logits': (N, K)} (encoder features and the online probe's logits)."""
  def forward(variables, images):
    out = network.apply(variables, images, train=False, predict=False)
    return {'embedding': out['embedding'], 'logits': out['logits']}
  return parallel.sharded(forward, mesh)


def make_embed_fn(encoder, mesh: Optional[Mesh] = None):
  """Jitted eval-mode encoder (BatchNorm in inference mode): (encoder
  variables, images) -> {'embedding': (N, C)}."""
  def forward(variables, images):
    return {'embedding': encoder.apply(variables, images, train=False)}
  return parallel.sharded(forward, mesh)


def extract(eval_fn, variables, batches: Iterable[dict]) -> dict[
    str, np.ndarray]:
  """Every output of `eval_fn(variables, images)` (e.g. 'embedding',
  'logits') and the labels, for every real (mask == 1) example in order;
  padding examples of the last batch are dropped here."""
  outs = {'label': []}
  for batch in batches:
    out = jax.device_get(eval_fn(variables, batch['image']))
    if jax.process_count() > 1:  # Outputs are global; so must labels be.
      batch = multihost_utils.process_allgather(
          {k: batch[k] for k in ('label', 'mask')}, tiled=True)
    keep = batch['mask'] > 0
    for k, v in out.items():
      outs.setdefault(k, []).append(np.asarray(v)[keep])
    outs['label'].append(batch['label'][keep])
  return {k: np.concatenate(v) for k, v in outs.items()}


def feature_batches(features: np.ndarray, labels: np.ndarray,
                    global_batch: int, seed: int, start_step: int = 0
                    ) -> Iterator[dict]:
  """Endless shuffled batches of extracted features (the fast path): global
  position g of step s is example perm_e[g mod N] with e = g div N and
  perm_e a permutation drawn from (seed, e); this process's slice."""
  n = len(labels)
  local, offset = input_pipeline._process_slice(  # pylint: disable=protected-access
      global_batch, jax.process_index(), jax.process_count())
  perms = {}
  for step in itertools.count(start_step):
    g = step * global_batch + offset + np.arange(local)
    # Keep the permutations of the (at most two) epochs this batch spans.
    perms = {e: perms[e] if e in perms else
             np.random.RandomState([seed, e]).permutation(n)
             for e in np.unique(g // n)}
    index = np.array([perms[e][i] for e, i in zip(g // n, g % n)])
    yield {'image': features[index], 'label': labels[index]}


def pad_batches(batches, size):
  """Zero-pads each batch to `size` rows (mask 0), for one compiled shape."""
  for b in batches:
    pad = size - len(b['label'])
    yield {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1))
           for k, v in b.items()}
