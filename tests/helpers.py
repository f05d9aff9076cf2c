"""What several test modules share: fake Fashion-MNIST idx files, the
command line with a tiny model, and reading a saved state back."""

import gzip
import importlib.util
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from ml_collections.config_flags import config_flags as cf

ROOT = os.path.join(os.path.dirname(__file__), '..')


def load_benchmark(name: str):
  """benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
  spec = importlib.util.spec_from_file_location(
      f'bench_{name}', os.path.join(ROOT, 'benchmarks', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TINY = ['--config.model.width=0.0625', '--config.model.projector_hidden=(16,)',
        '--config.model.predictor_hidden=(16,)',
        '--config.model.projection_dim=8', '--config.batch_size=16',
        '--config.eval.batch_size=16', '--config.log_every_steps=2',
        '--config.optimizer.warmup_epochs=0', '--config.eval.knn_k=20',
        '--config.eval.knn_k_small=5']


def cli_command(workdir, idx_dir, *extra):
  return [sys.executable, '-m', 'byol_jax.main',
          '--config=configs/byol_fashion_mnist.py', f'--workdir={workdir}',
          f'--config.dataset.idx_dir={idx_dir}', *TINY, *extra]


def cli_env(devices=2):
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def cli(workdir, idx_dir, *extra):
  return subprocess.run(cli_command(workdir, idx_dir, *extra), cwd=ROOT,
                        capture_output=True, text=True, env=cli_env(),
                        timeout=600)


def saved_state(workdir, step):
  """The saved TrainState as arrays on this process's first device, whatever
  the device topology of the run that saved it."""
  manager = ocp.CheckpointManager(
      workdir / 'checkpoints', item_names=('state', 'config'),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      manager.item_metadata(step)['state'],
      is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))['state']


def write_idx(path, array, compress):
  header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack(
      f'>{array.ndim}I', *array.shape)
  opener = gzip.open if compress else open
  with opener(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(directory, n_train=64, n_test=21, seed=0):
  """Fashion-MNIST-format idx files (the Debian package's names)."""
  rng = np.random.RandomState(seed)
  for split, n in (('train', n_train), ('t10k', n_test)):
    write_idx(directory / f'{split}-images-idx3-ubyte.gz',
              rng.randint(0, 256, (n, 28, 28)), compress=True)
    write_idx(directory / f'{split}-labels-idx1-ubyte.gz',
              np.arange(n) % 10, compress=True)


def load_config(name, **overrides):
  """configs/<name>'s get_config() with dotted overrides."""
  c = cf._LoadConfigModule(name, os.path.join(ROOT, 'configs', name)
                           ).get_config()
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def eval_config(name, idx, **overrides):
  """An evaluation config file's config for the tiny fake Fashion-MNIST."""
  return load_config(name, **{
      'dataset.idx_dir': str(idx), 'batch_size': 16, 'eval.batch_size': 16,
      'num_epochs': 2.0, 'log_every_steps': 4, **overrides})


def files(directory):
  """{path: bytes} of every file under `directory`."""
  return {p: p.read_bytes() for p in sorted(directory.rglob('*'))
          if p.is_file()}


def build_tfds_dataset(data_dir, n_train=200, n_test=30, num_shards=10,
                       image_size=8, num_classes=5):
  """A TFDS dataset written by TFDS itself (GeneratorBasedBuilder,
  `num_shards` TFRecord files per split): images of random pixels, labels
  i % num_classes and an 'id' feature i (the example's number). Returns
  the prepared builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class LocalImages(tfds.core.GeneratorBasedBuilder):
    """Random images with known ids."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(image_size, image_size, 3)),
              'label': tfds.features.ClassLabel(num_classes=num_classes),
              'id': np.int64}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples(n_train, 0),
              'test': self._generate_examples(n_test, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.RandomState(seed)
      for i in range(n):
        yield i, {'image': rng.randint(0, 256, (image_size, image_size, 3)
                                       ).astype(np.uint8),
                  'label': i % num_classes, 'id': i}

  builder = LocalImages(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return builder
