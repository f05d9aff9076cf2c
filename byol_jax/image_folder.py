"""Your own images: a folder tree of image files as a dataset.

`dataset.path` is either a tree of images with no labels (any depth) or the
ImageFolder layout (torchvision's, and `tfds.folder_dataset.ImageFolder`'s
without the split level): one subfolder per class, the images directly in
it. `dataset.labels` decides: 'folders' (class subfolders, required),
'none' (no labels), 'auto' (class subfolders when every image sits exactly
one level below `path`, else none).

Files are listed once, in sorted order (the same on every process), and read
by index, so a folder source has the in-memory sources' exact-resume order
(example position -> index_shuffle) whatever its size. With
`dataset.in_memory=True` the encoded files are held in RAM instead of being
read from disk at each visit.

Decoding is TF's (`tf.io.decode_image`: JPEG incl. progressive and CMYK,
PNG incl. palette / 16-bit / grey / alpha, BMP, GIF's first frame, WebP),
always to RGB first, then to grey when one channel is configured (ITU-R 601
luma, as PIL's 'L'); alpha is dropped. A file that fails to decode is
skipped, logged once and counted (`unreadable_files`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import zlib
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging

from byol_jax import console

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
LABEL_MODES = ('auto', 'folders', 'none')
# Per example, how many images of the shuffled order are tried before the
# pipeline gives up (a folder with that many unreadable files in a row).
MAX_TRIES = 8


class FolderError(console.UserError, ValueError):
  """A folder that cannot be read as a dataset; the message says why."""


@dataclasses.dataclass(frozen=True)
class FolderSource:
  """Image files: `paths` (N,) str, `labels` (N,) int32 (-1: no label),
  `class_names` (the class subfolders, label order; () when unlabelled),
  decoded to `channels` channels. `contents` holds the encoded files when
  the folder is kept in memory."""
  root: str
  paths: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  channels: int
  contents: Optional[np.ndarray] = None

  def __len__(self):
    return len(self.paths)

  @property
  def labelled(self) -> bool:
    return bool(self.class_names)

  def subset(self, index) -> 'FolderSource':
    index = np.asarray(index, np.int64)
    return dataclasses.replace(
        self, paths=self.paths[index], labels=self.labels[index],
        contents=None if self.contents is None else self.contents[index])

  def reader(self):
    """A graph function index -> (encoded bytes, label, path)."""
    paths = tf.constant(self.paths)
    labels = tf.constant(self.labels)
    contents = (None if self.contents is None
                else tf.constant(self.contents))

    def read(i):
      path = tf.gather(paths, i)
      data = (tf.io.read_file(path) if contents is None
              else tf.gather(contents, i))
      return data, tf.gather(labels, i), path
    return read

  def decode(self, data):
    """Encoded bytes -> uint8 (H, W, channels)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False,
                               dtype=tf.uint8)
    if self.channels == 1:
      image = tf.cast(tf.round(tf.image.rgb_to_grayscale(
          tf.cast(image, tf.float32))), tf.uint8)
    return tf.ensure_shape(image, [None, None, self.channels])


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: str) -> list[str]:
  """Every image file under `root` (any depth; hidden files and folders
  skipped), as paths relative to `root`, sorted."""
  if not tf.io.gfile.isdir(root):
    raise FolderError(f'dataset.path={root!r} is not a folder.')
  found = []
  for directory, subdirs, files in tf.io.gfile.walk(root):
    subdirs[:] = [s for s in subdirs if not s.startswith('.')]
    rel = os.path.relpath(directory, root)
    found += [name if rel == '.' else os.path.join(rel, name)
              for name in files if _is_image(name) and not name.startswith('.')]
  if not found:
    raise FolderError(
        f'No images under {root}: looked for files ending in '
        f'{", ".join(IMAGE_EXTENSIONS)} (any case, any depth).')
  return sorted(found)


def _labels(files: list[str], mode: str, root: str):
  """(labels, class names) of the relative paths under `mode`."""
  if mode not in LABEL_MODES:
    raise FolderError(f'dataset.labels={mode!r}: use one of {LABEL_MODES}.')
  one_level = all(f.count(os.sep) == 1 for f in files)
  if mode == 'folders' and not one_level:
    odd = next(f for f in files if f.count(os.sep) != 1)
    raise FolderError(
        f"dataset.labels='folders' needs every image in a class subfolder "
        f'directly below {root} (root/<class>/<image>), but {odd} is not; '
        "move it, or use dataset.labels='none'.")
  if mode == 'none' or not one_level:
    return np.full(len(files), -1, np.int32), ()
  classes = tuple(sorted({f.split(os.sep, 1)[0] for f in files}))
  index = {c: i for i, c in enumerate(classes)}
  return np.array([index[f.split(os.sep, 1)[0]] for f in files],
                  np.int32), classes


def open_folder(root: str, *, labels: str = 'auto', channels: int = 3,
                in_memory: bool = False) -> FolderSource:
  """Lists `root` and returns its FolderSource (see the module docstring)."""
  root = root.rstrip('/') or '/'
  files = list_images(root)
  label_array, classes = _labels(files, labels, root)
  paths = np.array([os.path.join(root, f) for f in files])
  contents = None
  if in_memory:
    contents = np.array([tf.io.gfile.GFile(p, 'rb').read() for p in paths],
                        dtype=object)
  return FolderSource(root, paths, label_array, classes, channels, contents)


def held_out(source: FolderSource, fraction: float) -> np.ndarray:
  """Whether each file is in the held-out evaluation part: a fixed
  `fraction` chosen by a hash of its path below the root, so adding files
  never moves an existing file between the parts."""
  cut = int(round(fraction * 2**32))
  rel = [os.path.relpath(p, source.root) for p in source.paths]
  return np.array([zlib.crc32(r.encode()) < cut for r in rel], bool)


def describe(source: FolderSource, what: str) -> str:
  if source.labelled:
    return (f'{what}: {len(source)} images in {len(source.class_names)} '
            f'class folders of {source.root}')
  return f'{what}: {len(source)} unlabelled images under {source.root}'


_unreadable = set()
_unreadable_lock = threading.Lock()


def unreadable_files() -> int:
  """Distinct files this process found it could not decode."""
  return len(_unreadable)


def note_unreadable(path) -> np.int64:
  """Logs `path` as unreadable the first time; the count so far."""
  path = path.decode() if isinstance(path, bytes) else str(path)
  with _unreadable_lock:
    new = path not in _unreadable
    _unreadable.add(path)
    count = len(_unreadable)
  if new:
    logging.warning('Skipped an unreadable image (%d so far): %s', count, path)
  return np.int64(count)


def decoded_example(source: FolderSource, index_of, tries: int = MAX_TRIES):
  """A graph function g -> (image, label): the first decodable of the
  images `index_of(g, 0)`, `index_of(g, 1)`, ...; each position yields
  exactly one image, so a bad file never shifts the examples after it
  (and a resumed run sees what an uninterrupted one does)."""
  read = source.reader()

  def attempt(g, k):
    data, label, path = read(index_of(g, k))
    return source.decode(data), label, k, path

  def first_readable(g):
    ds = tf.data.Dataset.range(tries).map(lambda k: attempt(g, k))
    # If every try fails the position must not vanish (that would shift
    # every later example): an element that raises ends the run instead.
    give_up = tf.data.Dataset.from_tensors(g).map(
        lambda g: _fail(g, tries, source.channels))
    return ds.ignore_errors().concatenate(give_up).take(1)

  def log_skips(image, label, k, g):
    def note():
      # The file at try 0 failed (and those before try k).
      _, _, path = read(index_of(g, tf.constant(0, tf.int64)))
      return tf.numpy_function(note_unreadable, [path], tf.int64,
                               stateful=True)
    noted = tf.cond(k > 0, note, lambda: tf.constant(0, tf.int64))
    with tf.control_dependencies([noted]):
      return tf.identity(image), label

  def example(g):
    return first_readable(g).map(
        lambda image, label, k, path: log_skips(image, label, k, g))
  return example


def images_in_order(source: FolderSource,
                    n: Optional[int] = None) -> tf.data.Dataset:
  """The first n images (default all) in file order, decoded in parallel;
  an unreadable one is replaced by the next readable one (and logged)."""
  n = len(source) if n is None else min(n, len(source))
  example = decoded_example(
      source, lambda g, k: tf.minimum(g + k, len(source) - 1))
  return tf.data.Dataset.range(n).interleave(
      example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).map(
          lambda image, label: image)


def _fail(g, tries, channels):
  check = tf.debugging.Assert(
      False, [f'{tries} images in a row could not be decoded at example '
              'position', g, '; see the warnings above for their paths.'])
  with tf.control_dependencies([check]):
    return (tf.zeros([1, 1, channels], tf.uint8), tf.constant(-1, tf.int32),
            tf.constant(0, tf.int64), tf.constant(''))
