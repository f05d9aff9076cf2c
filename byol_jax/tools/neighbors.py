r"""A picture of what an encoder learned: query images and their nearest
training images under the encoder, under raw pixels and under the same
network at its random initialisation.

  python -m byol_jax.tools.neighbors --checkpoint=runs/byol_fashion_mnist \
      --out=neighbors.png
  python -m byol_jax.tools.neighbors --checkpoint=runs/mine \
      --queries=/data/new_photos --out=neighbors.png   # your own queries

Neighbours are by cosine similarity of the embeddings (BatchNorm in
inference mode, the eval view), among `--bank` training images of the
checkpoint's own dataset (a fixed spread of the split; a folder dataset
too). Queries: a spread of the eval split, or the images of `--queries`.
Where labels are known a neighbour is framed green (the query's class) or
red, and the title gives, over `--score_queries` eval images, how often the
top-k neighbours share the query's class under each of the three.
Never replaces an existing file.
"""

import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec as P

from byol_jax import (cli, console, dataset_info, image_folder,
                      input_pipeline, networks, parallel, pretrained)
from byol_jax.evaluation import features, protocols

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when the command runs, so importing this module (tests,
  notebooks, the other commands) adds no flags."""
  flags.DEFINE_string(
      'checkpoint', None, 'Pretraining workdir or step directory.')
  flags.DEFINE_string('out', 'neighbors.png', 'Output PNG path.')
  flags.DEFINE_string(
      'queries', '', 'A folder of query images (default: the eval split).')
  flags.DEFINE_integer('num_queries', 8, 'Query rows in the picture.')
  flags.DEFINE_integer('k', 5, 'Neighbours shown per query and method.')
  flags.DEFINE_integer('bank', 5000, 'Training images searched.')
  flags.DEFINE_integer(
      'score_queries', 1000, 'Eval images the class-agreement figures use.')
  flags.DEFINE_integer('batch_size', 256, 'Images per batch (a '
                       'multiple of the device count).')
  flags.mark_flags_as_required(['checkpoint'])

METHODS = ('encoder', 'raw pixels', 'random init')


def _spread(source, n):
  return input_pipeline.take(source, n) if n < len(source) else source


def _embed_all(embed, variables_by_method, source, d, batch_size):
  """{method: (N, F) embeddings}, the [0, 1] images and the labels."""
  batches = list(input_pipeline.eval_batches(
      source, global_batch=batch_size, image_size=d.image_size, mean=d.mean,
      std=d.std, crop_fraction=d.eval_crop_fraction))
  keep = [b['mask'] > 0 for b in batches]
  images = np.concatenate([
      b['image'][m] * np.asarray(d.std) + np.asarray(d.mean)
      for b, m in zip(batches, keep)]).clip(0, 1)
  labels = np.concatenate([b['label'][m] for b, m in zip(batches, keep)])
  out = {'raw pixels': images.reshape(len(images), -1)}
  for method, variables in variables_by_method.items():
    out[method] = features.extract(embed, variables, batches)['embedding']
  return out, images, labels


def nearest(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
  """(Q, k) indices of the bank rows of highest cosine similarity."""
  def unit(x):
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sims = unit(queries) @ unit(bank).T
  top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
  order = np.take_along_axis(-sims, top, axis=1).argsort(axis=1)
  return np.take_along_axis(top, order, axis=1)


def agreement(query_labels, bank_labels, neighbours) -> float:
  """Fraction of the neighbours that share their query's label."""
  return float(np.mean(bank_labels[neighbours] == query_labels[:, None]))


def draw(path, query_images, query_labels, bank_images, bank_labels,
         neighbours, k, title, class_names=None):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows, cols = len(query_images), 1 + len(METHODS) * k
  fig, axes = plt.subplots(rows, cols, squeeze=False,
                           figsize=(0.95 * cols + 0.4, 1.05 * rows + 0.9))
  name = lambda y: (  # noqa: E731
      '' if y < 0 else class_names[y] if class_names else str(y))

  def show(ax, image, frame=None, caption=''):
    grey = image.shape[-1] == 1
    ax.imshow(image[..., 0] if grey else image, cmap='gray' if grey else None,
              vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
      spine.set_color(frame or 'white')
      spine.set_linewidth(3 if frame else 0)
    ax.set_xlabel(caption, fontsize=6, labelpad=1)

  for r in range(rows):
    show(axes[r, 0], query_images[r], caption=name(query_labels[r]))
    for m, method in enumerate(METHODS):
      for j in range(k):
        i = neighbours[method][r, j]
        frame = None
        if query_labels[r] >= 0 and bank_labels[i] >= 0:
          frame = 'tab:green' if bank_labels[i] == query_labels[r] else 'tab:red'
        show(axes[r, 1 + m * k + j], bank_images[i], frame,
             name(bank_labels[i]))
  axes[0, 0].set_title('query', fontsize=8)
  for m, method in enumerate(METHODS):
    axes[0, 1 + m * k + k // 2].set_title(method, fontsize=8)
  fig.suptitle(title, fontsize=8)
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  cli.setup()
  if os.path.lexists(FLAGS.out):
    raise app.UsageError(f'{FLAGS.out} exists; choose another --out.')
  if FLAGS.batch_size % jax.device_count():
    raise app.UsageError(f'--batch_size={FLAGS.batch_size} is not divisible by '
                         f'the {jax.device_count()} devices.')
  mesh = parallel.make_mesh()
  net = pretrained.load(FLAGS.checkpoint)
  saved = net.config
  d = ml_collections.ConfigDict(saved).dataset
  encoder = networks.build_encoder(net.model, compute_dtype='float32')
  embed = features.make_embed_fn(encoder, mesh)
  replicated = NamedSharding(mesh, P())
  initial = protocols.initial_variables(saved, mesh)
  variables = {
      'encoder': jax.device_put(jax.device_get(net.encoder_variables),
                                replicated),
      'random init': {'params': initial['params']['encoder'],
                      'batch_stats': initial['batch_stats']['encoder']}}
  train = input_pipeline.load_source(d, d.train_split)
  if FLAGS.queries:
    query_source = image_folder.open_folder(
        FLAGS.queries, channels=d.num_channels)
    score_source = None
  else:
    query_source = input_pipeline.load_source(d, d.eval_split)
    score_source = _spread(query_source, FLAGS.score_queries)
  train, query_source = dataset_info.resolve(d, train, query_source)
  bank, bank_images, bank_labels = _embed_all(
      embed, variables, _spread(train, FLAGS.bank), d, FLAGS.batch_size)
  queries, query_images, query_labels = _embed_all(
      embed, variables, _spread(query_source, FLAGS.num_queries), d,
      FLAGS.batch_size)
  k = min(FLAGS.k, len(bank_labels))
  shown = {m: nearest(queries[m], bank[m], k) for m in METHODS}
  title = (f'{d.path or d.name}: top-{k} neighbours (cosine) among '
           f'{len(bank_labels)} training images; encoder at step {net.step}')
  labelled = score_source is not None and d.num_classes > 0
  if labelled:
    scored, _, score_labels = _embed_all(embed, variables, score_source, d,
                                         FLAGS.batch_size)
    shares = {m: agreement(score_labels, bank_labels,
                           nearest(scored[m], bank[m], k)) for m in METHODS}
    title += ('\nneighbours of the query\'s class, over '
              f'{len(score_labels)} eval images: ' + ', '.join(
                  f'{m} {100 * v:.1f}%' for m, v in shares.items()))
    print(title.replace('\n', '; '))
  classes = input_pipeline.class_names(train, d)
  if jax.process_index() == 0:
    draw(FLAGS.out, query_images, query_labels, bank_images, bank_labels,
         shown, k, title, classes)
    print(f'Wrote {FLAGS.out}')


def run():
  """Console-script entry point (`byol-jax-neighbors`)."""
  _define_flags()
  console.run(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
