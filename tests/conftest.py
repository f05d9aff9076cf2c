"""Test setup: 8 virtual CPU devices, before anything imports JAX; one XLA
compilation cache for the session."""

import atexit
import os
import shutil
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# The command-line tests start many processes that compile the same train
# step; JAX's persistent cache (read by every process, through the
# environment) compiles it once: a CLI run drops from ~75 s to ~25 s. Fresh
# for every session, so no test depends on an earlier session's state. Under
# pytest-xdist the controller loads this file first and makes it; its
# workers inherit it through the environment.
_XLA_CACHE = os.environ.get('BYOL_JAX_TEST_CACHE')
if not _XLA_CACHE:
  _XLA_CACHE = tempfile.mkdtemp(prefix='byol_jax_test_xla_cache_')
  os.environ['BYOL_JAX_TEST_CACHE'] = _XLA_CACHE
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ['JAX_COMPILATION_CACHE_DIR'] = _XLA_CACHE
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.5'
# model.conv_impl='auto' caches its convolution timings per machine: one
# fresh cache per session too (shared by the processes the tests start).
os.environ['BYOL_JAX_CACHE_DIR'] = os.path.join(_XLA_CACHE, 'byol_jax')

import chex  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import pytest  # noqa: E402

chex.set_n_cpu_devices(8)


def tiny_model_config(head='byol', use_predictor=True):
  """ResNet-18 at width 1/16 with 16-wide heads: compiles in seconds."""
  return ml_collections.ConfigDict(dict(
      depth=18, width=1 / 16, stem='small', head=head,
      projector_hidden=(16,), predictor_hidden=(16,), projection_dim=8,
      use_predictor=use_predictor, compute_dtype='float32'))


@pytest.fixture(scope='session')
def devices():
  assert jax.device_count() == 8, 'conftest must run before JAX starts'
  return jax.devices()


@pytest.fixture(scope='session')
def pretrained(tmp_path_factory):
  """(workdir, idx_dir) of a 4-step pretraining run of a tiny ResNet-18 on
  fake Fashion-MNIST (64 train, 21 test images: not a multiple of the eval
  batch), from the command line with the CLI tests' flags (so it shares their
  compilations)."""
  from helpers import cli, write_fake_fashion_mnist  # pylint: disable=g-import-not-at-top
  idx = tmp_path_factory.mktemp('fmnist')
  write_fake_fashion_mnist(idx, n_train=64, n_test=21)
  workdir = tmp_path_factory.mktemp('pretrain') / 'run'
  r = cli(workdir, idx, '--config.num_train_steps=4')
  assert r.returncode == 0, r.stderr[-3000:]
  return workdir, idx
