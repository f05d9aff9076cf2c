r"""Time to the first batch of a streamed TFDS split after resuming at 0, 10k,
100k and 1M consumed examples: positional resume (today's) against
re-reading every consumed record (what `_stream_examples` did before, still
the path for splits whose files cannot be addressed), side by side; and the
same images as a folder of JPEG files (`dataset.path`).

  .venv/bin/python benchmarks/stream_resume.py [--examples=10000] [--shards=16]

Builds a TFDS dataset with TFDS itself in a temporary folder (random
JPEGs, `--side` px, `--shards` TFRecord files), then for each point and
method builds the pipeline and times `next()`. Prints each time and its
ratio to the step-0 time of the same method (median of 3, after a
warm-up). Goal: <= 2x at every point.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'tests'))
from helpers import build_tfds_dataset  # noqa: E402  pylint: disable=g-import-not-at-top

import tensorflow_datasets as tfds  # noqa: E402

from byol_jax import augment, image_folder, input_pipeline  # noqa: E402


def first_batch_seconds(source, consumed, batch, side, window):
  v1, v2 = augment.preset('byol_small')
  start = time.perf_counter()
  ds = input_pipeline.pretrain_dataset(
      source, global_batch=batch, seed=0, image_size=side, view1=v1,
      view2=v2, mean=(0.5,) * 3, std=(0.25,) * 3,
      start_step=consumed // batch, shuffle_buffer=window)
  next(iter(ds))
  return time.perf_counter() - start


def main():
  from byol_jax import conv_autotune  # pylint: disable=g-import-not-at-top
  print(f'Measured on {conv_autotune.machine()}.')
  parser = argparse.ArgumentParser()
  parser.add_argument('--examples', type=int, default=10_000)
  parser.add_argument('--shards', type=int, default=16)
  parser.add_argument('--side', type=int, default=96)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--window', type=int, default=2_000,
                      help='shuffle buffer / window (records)')
  parser.add_argument('--points', default='0,10000,100000,1000000')
  parser.add_argument('--repeats', type=int, default=3,
                      help='the median of this many timings per point')
  parser.add_argument('--skip_points', default='0,10000,100000',
                      help='points for the re-reading method (it is linear)')
  args = parser.parse_args()
  data_dir = tempfile.mkdtemp(prefix='stream_resume_')
  try:
    t = time.perf_counter()
    builder = build_tfds_dataset(data_dir, n_train=args.examples,
                                 n_test=args.shards,
                                 num_shards=args.shards,
                                 image_size=args.side, num_classes=10)
    size = sum(os.path.getsize(os.path.join(dp, f))
               for dp, _, fs in os.walk(data_dir) for f in fs)
    print(f'Built {args.examples} examples in {args.shards} shards '
          f'({size / args.examples / 1e3:.1f} KB per record) in '
          f'{time.perf_counter() - t:.0f} s.')
    stream = input_pipeline.StreamSource(builder, 'train', args.examples)
    folder = os.path.join(data_dir, 'folder')
    for i, example in enumerate(builder.as_dataset(
        split='train', decoders={'image': tfds.decode.SkipDecoding()})):
      if i % 1000 == 0:
        os.makedirs(os.path.join(folder, str(i // 1000)), exist_ok=True)
      with open(os.path.join(folder, str(i // 1000), f'{i}.jpg'), 'wb') as f:
        f.write(example['image'].numpy())
    folder_source = image_folder.open_folder(folder, labels='none')
    rows = []
    positional = input_pipeline._file_instructions  # pylint: disable=protected-access
    for method, points in (('positional', args.points),
                           ('re-read', args.skip_points),
                           ('folder', args.points)):
      # The re-reading path is what a split without addressable files gets.
      input_pipeline._file_instructions = (  # pylint: disable=protected-access
          lambda *a: None) if method == 're-read' else positional
      source = folder_source if method == 'folder' else stream
      first_batch_seconds(source, 0, args.batch, args.side, args.window)
      base = None  # (Above: a warm-up, tracing and file cache.)
      for consumed in map(int, points.split(',')):
        s = sorted(first_batch_seconds(source, consumed, args.batch,
                                       args.side, args.window)
                   for _ in range(args.repeats))[args.repeats // 2]
        base = base or s
        rows.append((method, consumed, s, s / base))
        print(f'{method:10s} resumed after {consumed:>9,d} examples: '
              f'{s:7.2f} s  ({s / base:5.2f}x step 0)', flush=True)
    input_pipeline._file_instructions = positional  # pylint: disable=protected-access
    print('\n| method | consumed examples | first batch (s) | vs step 0 |')
    print('|---|---:|---:|---:|')
    for method, consumed, s, ratio in rows:
      print(f'| {method} | {consumed:,d} | {s:.2f} | {ratio:.2f}x |')
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == '__main__':
  main()
