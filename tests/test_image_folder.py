"""Folders of real image files (written by PIL, in every common format and
mode) as datasets: listing, labels, decoding, bad files, exact resume and
evaluation batches."""

import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from byol_jax import augment, image_folder, input_pipeline

# (file name, PIL mode to convert to, save options): the formats and modes
# users' folders hold.
FORMATS = [
    ('rgb.jpg', 'RGB', {}), ('progressive.jpg', 'RGB', {'progressive': True}),
    ('cmyk.jpg', 'CMYK', {}), ('grey.jpg', 'L', {}),
    ('palette.png', 'P', {}), ('rgba.png', 'RGBA', {}),
    ('grey_alpha.png', 'LA', {}), ('sixteen_bit.png', 'I;16', {}),
    ('binary.png', '1', {}), ('rgb.bmp', 'RGB', {}), ('frames.gif', 'P', {}),
    ('lossless.webp', 'RGB', {'lossless': True}), ('UPPER.JPEG', 'RGB', {}),
]


def _pixels(rng, h, w, colour=None):
  x = rng.randint(0, 256, (h, w, 3))
  if colour is not None:  # A class look: one strong channel plus noise.
    x = x // 4
    x[..., colour] += 160
  # Smooth images: JPEG's errors stay small, as on photos.
  x = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(x, 1, (0, 1))) // 4
  return x.astype(np.uint8)


def _save(path, array, mode, options):
  image = Image.fromarray(array)
  if mode == 'I;16':
    # 16-bit grey: the 8-bit values spread over 0..65535.
    grey = np.asarray(image.convert('L')).astype(np.uint16) * 257
    image = Image.fromarray(grey)
  elif mode != 'RGB':
    image = image.convert(mode)
  if path.endswith('.gif'):  # Two frames; the first is the image.
    second = Image.fromarray(255 - array).convert('P')
    image.save(path, save_all=True, append_images=[second])
  else:
    image.save(path, **options)


def _expected(path, channels):
  """What the file holds, as PIL (the producer) reads it: RGB with alpha
  dropped, or ITU-R 601 luma."""
  with Image.open(path) as image:
    image.seek(0)
    if image.mode == 'I;16':
      image = Image.fromarray((np.asarray(image) // 257).astype(np.uint8))
    rgb = np.asarray(image.convert('RGB'), np.float64)
  if channels == 1:
    return (rgb @ np.array([0.2989, 0.5870, 0.1140]))[..., None]
  return rgb


def _decode(source, index):
  data, _, _ = source.reader()(tf.constant(index))
  return source.decode(data).numpy().astype(np.float64)


@pytest.fixture(scope='module')
def formats_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('formats')
  rng = np.random.RandomState(0)
  for name, mode, options in FORMATS:
    _save(str(root / name), _pixels(rng, 23, 31), mode, options)
  (root / 'notes.txt').write_text('not an image')
  (root / '.hidden.jpg').write_bytes(b'')
  return root


@pytest.mark.parametrize('channels', [3, 1])
def test_every_format_and_mode_decodes_as_pil_reads_it(formats_dir, channels):
  source = image_folder.open_folder(str(formats_dir), channels=channels)
  names = [os.path.basename(p) for p in source.paths]
  assert sorted(names) == sorted(n for n, _, _ in FORMATS)  # No .txt, hidden.
  assert not source.labelled and (source.labels == -1).all()
  for i, name in enumerate(names):
    got, want = _decode(source, i), _expected(source.paths[i], channels)
    assert got.shape == (23, 31, channels), name
    # Lossless formats: the same pixels (grey within rounding); JPEG: two
    # decoders, small differences.
    tolerance = 2.5 if name.lower().endswith(('.jpg', '.jpeg')) else 0.51
    assert np.abs(got - want).mean() <= tolerance, (name, np.abs(
        got - want).mean())


def _class_folder(root, n_per_class=6, size=16, seed=0):
  rng = np.random.RandomState(seed)
  for c, name in enumerate(['zebra', 'apple', 'mango']):
    os.makedirs(root / name, exist_ok=True)
    for i in range(n_per_class):
      ext = ('png', 'jpg', 'bmp')[i % 3]
      Image.fromarray(_pixels(rng, size, size, c)).save(
          str(root / name / f'{i}.{ext}'))
  return root


def test_labels_from_class_folders_and_when_there_are_none(tmp_path):
  root = _class_folder(tmp_path / 'classes')
  source = image_folder.open_folder(str(root))
  assert source.class_names == ('apple', 'mango', 'zebra')  # Sorted.
  names = [os.path.relpath(p, root) for p in source.paths]
  want = [('apple', 'mango', 'zebra').index(n.split(os.sep)[0])
          for n in names]
  np.testing.assert_array_equal(source.labels, want)
  assert image_folder.open_folder(str(root), labels='none').class_names == ()
  # A tree deeper than one level: 'auto' finds no classes, 'folders' says
  # which file is out of place.
  nested = tmp_path / 'classes' / 'apple' / 'more'
  nested.mkdir()
  Image.fromarray(_pixels(np.random.RandomState(1), 8, 8)).save(
      str(nested / 'x.png'))
  assert not image_folder.open_folder(str(root)).labelled
  with pytest.raises(image_folder.FolderError,
                     match=r'apple/more/x.png is not'):
    image_folder.open_folder(str(root), labels='folders')


def test_a_folder_without_images_names_the_path_and_the_extensions(tmp_path):
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(image_folder.FolderError,
                     match=rf'No images under {tmp_path}: looked for files '
                     r'ending in \.jpg, \.jpeg, \.png'):
    image_folder.open_folder(str(tmp_path))
  with pytest.raises(image_folder.FolderError, match='is not a folder'):
    image_folder.open_folder(str(tmp_path / 'missing'))


def test_the_held_out_part_does_not_move_when_files_are_added(tmp_path):
  root = _class_folder(tmp_path / 'f', n_per_class=40, size=8)
  before = image_folder.open_folder(str(root))
  held = set(before.paths[image_folder.held_out(before, 0.25)])
  assert 0.15 < len(held) / len(before) < 0.35
  _class_folder(tmp_path / 'f', n_per_class=60, size=8, seed=1)
  after = image_folder.open_folder(str(root))
  held_after = set(after.paths[image_folder.held_out(after, 0.25)])
  assert held == held_after & set(before.paths)


def _truncate(path):
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 3])


def _dataset_config(**fields):
  from byol_jax import config_lib  # pylint: disable=g-import-not-at-top
  d = config_lib.base_config().dataset
  d.update(dict(name='folder', train_split='train', eval_split='eval',
                image_size=16, num_channels=3, num_classes=-1, mean=(),
                std=(), eval_crop_fraction=1.0, **fields))
  return d


@pytest.mark.parametrize('in_memory', [False, True])
def test_a_resumed_stream_sees_what_an_uninterrupted_one_does_bad_files_too(
    tmp_path, caplog, in_memory):
  """Position g is one image whatever fails: the uninterrupted stream's
  batches 3.. equal a stream started at step 3; an unreadable file takes
  the next image of the shuffled order, is logged once and counted; two
  processes' slices make up the global batch."""
  root = _class_folder(tmp_path / 'f', n_per_class=7)
  _truncate(root / 'apple' / '1.jpg')
  (root / 'mango' / 'fake.png').write_text('not a png')
  source = input_pipeline.load_source(
      _dataset_config(path=str(root), in_memory=in_memory, eval_holdout=0.0),
      'train')
  assert len(source) == 22
  kwargs = dict(global_batch=8, seed=3, image_size=16,
                view1=augment.preset('byol_small')[0],
                view2=augment.preset('byol_small')[1], mean=(0.5,) * 3,
                std=(0.25,) * 3)
  with caplog.at_level(logging.WARNING):
    whole = list(input_pipeline.pretrain_dataset(source, **kwargs).take(
        8).as_numpy_iterator())
  skipped = [r.getMessage() for r in caplog.records
             if 'unreadable image' in r.getMessage()]
  assert len(skipped) == 2, skipped  # Each bad file once, 8 batches = 3 epochs.
  assert any('apple/1.jpg' in s for s in skipped)
  assert any('mango/fake.png' in s for s in skipped)
  resumed = list(input_pipeline.pretrain_dataset(
      source, start_step=3, **kwargs).take(5).as_numpy_iterator())
  for a, b in zip(whole[3:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  halves = [list(input_pipeline.pretrain_dataset(
      source, process_index=i, process_count=2, **kwargs).take(
          8).as_numpy_iterator()) for i in range(2)]
  for step, batch in enumerate(whole):
    for k in batch:
      np.testing.assert_array_equal(
          batch[k], np.concatenate([halves[0][step][k], halves[1][step][k]]))
  # Every label seen is a real class (bad files never yield an example).
  labels = np.concatenate([b['label'] for b in whole])
  assert set(labels) <= {0, 1, 2}


def test_evaluation_batches_cover_each_file_once_bad_ones_masked(tmp_path):
  root = _class_folder(tmp_path / 'f', n_per_class=5)
  _truncate(root / 'zebra' / '2.bmp')
  source = image_folder.open_folder(str(root))
  n = len(source)
  readable = [i for i, p in enumerate(source.paths) if not p.endswith(
      'zebra/2.bmp')]
  for count in (1, 2):
    batches = [list(input_pipeline.eval_batches(
        source, global_batch=4, image_size=16, mean=(0.0,) * 3,
        std=(1.0,) * 3, process_index=i, process_count=count))
               for i in range(count)]
    assert len({len(b) for b in batches}) == 1  # Same count per process.
    rows = [np.concatenate([b[j][k] for b in batches])
            for j in range(len(batches[0])) for k in ('image', 'label',
                                                      'mask')]
    images = np.concatenate(rows[0::3])
    labels, mask = np.concatenate(rows[1::3]), np.concatenate(rows[2::3])
    assert len(mask) == 16 and mask.sum() == n - 1
    np.testing.assert_array_equal(np.flatnonzero(mask), readable)
    np.testing.assert_array_equal(labels[readable], source.labels[readable])
    for i in readable:
      want = _expected(source.paths[i], 3) / 255
      tolerance = 0.01 if source.paths[i].endswith('.jpg') else 1e-5
      assert np.abs(images[i] - want).mean() < tolerance, source.paths[i]


def test_folder_splits_eval_path_and_held_out_part(tmp_path):
  root = _class_folder(tmp_path / 'train', n_per_class=20, size=8)
  d = _dataset_config(path=str(root), eval_holdout=0.2)
  train = input_pipeline.load_source(d, 'train')
  held = input_pipeline.load_source(d, 'eval')
  assert len(train) + len(held) == 60 and 4 <= len(held) <= 20
  assert not set(train.paths) & set(held.paths)
  other = _class_folder(tmp_path / 'eval', n_per_class=3, size=8)
  d = _dataset_config(path=str(root), eval_path=str(other))
  assert len(input_pipeline.load_source(d, 'train')) == 60
  assert len(input_pipeline.load_source(d, 'eval')) == 9
  (other / 'kiwi').mkdir()
  Image.fromarray(_pixels(np.random.RandomState(0), 8, 8)).save(
      str(other / 'kiwi' / 'k.png'))
  input_pipeline._FOLDERS.clear()  # pylint: disable=protected-access
  with pytest.raises(image_folder.FolderError, match="'kiwi'"):
    input_pipeline.load_source(d, 'eval')


@pytest.mark.slow
def test_the_readme_command_trains_on_a_class_folder(tmp_path):
  """`main --config=configs/byol_folder_small.py --config.dataset.path=...`
  on class subfolders of mixed formats with one broken file: classes,
  channels and statistics come from the folder, the kNN monitor runs on
  the held-out part, the broken file is skipped and counted; the preview
  tool draws the folder's views."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from helpers import ROOT, TINY, cli_env  # pylint: disable=g-import-not-at-top
  root = _class_folder(tmp_path / 'images', n_per_class=12)
  _truncate(root / 'mango' / '4.jpg')
  workdir = tmp_path / 'run'
  r = subprocess.run(
      [sys.executable, '-m', 'byol_jax.main',
       '--config=configs/byol_folder_small.py',
       f'--config.dataset.path={root}', f'--workdir={workdir}', *TINY,
       '--config.num_train_steps=4', '--config.dataset.image_size=16',
       '--config.dataset.eval_holdout=0.25'],
      cwd=ROOT, capture_output=True, text=True, env=cli_env(), timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert re.search(r'training: \d+ images in 3 class folders', r.stderr)
  assert 'dataset.num_classes=3, from' in r.stderr
  assert 'Skipped an unreadable image (1 so far):' in r.stderr
  assert '1 unreadable image files were skipped' in r.stderr
  result = json.load(open(workdir / 'results' / 'knn_step4.json'))
  assert 0 <= result['metrics']['eval/knn_top1_k20'] <= 1
  d = result['config']['dataset']
  assert (d['num_classes'], d['num_channels'], len(d['mean'])) == (3, 3, 3)
  out = tmp_path / 'views.png'
  r = subprocess.run(
      [sys.executable, '-m', 'byol_jax.tools.show_augmentations',
       '--config=configs/byol_folder_small.py',
       f'--config.dataset.path={root}', f'--out={out}', '--num=4'],
      cwd=ROOT, capture_output=True, text=True, env=cli_env(), timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert Image.open(out).size[0] > 200
  # An empty folder: one line saying where and what was looked for.
  (tmp_path / 'empty').mkdir()
  r = subprocess.run(
      [sys.executable, '-m', 'byol_jax.main',
       '--config=configs/byol_folder_small.py',
       f'--config.dataset.path={tmp_path / "empty"}',
       f'--workdir={tmp_path / "run2"}'],
      cwd=ROOT, capture_output=True, text=True, env=cli_env(), timeout=600)
  assert r.returncode == 1, r.stderr[-3000:]
  assert 'Traceback' not in r.stderr
  assert re.search(r'^Error: No images under .*empty: looked for files '
                   r'ending in \.jpg', r.stderr, re.M), r.stderr[-2000:]
  assert not (tmp_path / 'run2').exists()
