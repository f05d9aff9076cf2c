"""Encoder export (flax and torchvision layouts), load_encoder, and the
feature-extraction command."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import byol_jax
from byol_jax import config_lib, export, networks, official_weights, pretrained
import dill
from official_layout import official_layout, write_official_checkpoint

ROOT = os.path.join(os.path.dirname(__file__), '..')


@pytest.fixture(scope='module')
def official_file(tmp_path_factory):
  params, state = official_layout(np.random.RandomState(2))
  path = tmp_path_factory.mktemp('official') / 'pretrain_res50x1.pkl'
  write_official_checkpoint(path, params, state, dill.dump)
  return str(path)


def _our_features(source, x):
  net = pretrained.load(source)
  model = net.model
  encoder = networks.ResNet(depth=model.depth, width=model.width,
                            stem=model.stem)
  return np.asarray(encoder.apply(net.encoder_variables, x, train=False))


def test_flax_export_round_trips_through_load_encoder(official_file,
                                                      tmp_path):
  out = export.export(official_file, str(tmp_path / 'enc.npz'))
  meta = export.read_metadata(out)
  assert (meta['format'], meta['layout'], meta['step']) == (
      export.FORMAT, 'flax', 300_000)
  assert meta['model']['depth'] == 50
  with np.load(out, allow_pickle=False) as f:  # Plain arrays only.
    assert all(f[k].dtype != object for k in f.files)
  apply_fn, variables = byol_jax.load_encoder(out)
  x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
  np.testing.assert_allclose(np.asarray(apply_fn(variables, x)),
                             _our_features(official_file, x), rtol=1e-5,
                             atol=1e-5)  # jit vs. op-by-op float32.
  with pytest.raises(FileExistsError, match='--overwrite'):
    export.export(official_file, out)
  with pytest.raises(ValueError, match='flax-layout'):
    byol_jax.load_encoder(export.export(
        official_file, str(tmp_path / 'tv.npz'), 'torchvision'))


def test_torchvision_layout_names_and_shapes(official_file, tmp_path):
  out = export.export(official_file, str(tmp_path / 'tv.npz'), 'torchvision')
  with np.load(out, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files if k != '__metadata__'}
  # torchvision.models.resnet50().state_dict() minus fc: 318 entries.
  assert len(arrays) == 318
  assert arrays['conv1.weight'].shape == (64, 3, 7, 7)
  assert arrays['layer1.0.downsample.0.weight'].shape == (256, 64, 1, 1)
  assert arrays['layer4.2.conv2.weight'].shape == (512, 512, 3, 3)
  assert arrays['layer3.5.bn3.running_var'].shape == (1024,)
  assert 'layer2.1.downsample.0.weight' not in arrays


def test_torchvision_resnet50_gives_our_features(official_file, tmp_path):
  """With TF 'SAME' padding switched on, torchvision's ResNet-50 loaded
  from the export computes our encoder's features (odd and even sizes)."""
  torch = pytest.importorskip('torch')
  torchvision = pytest.importorskip('torchvision')
  out = export.export(official_file, str(tmp_path / 'tv.npz'), 'torchvision')
  with np.load(out, allow_pickle=False) as f:
    state = {k: torch.from_numpy(f[k]) for k in f.files
             if k != '__metadata__'}
  model = torchvision.models.resnet50()
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert sorted(missing) == ['fc.bias', 'fc.weight'] and not unexpected
  model.fc = torch.nn.Identity()
  model.eval()
  export.tf_same_padding(model)
  for size in (64, 45):
    x = np.random.RandomState(size).randn(2, size, size, 3).astype(
        np.float32)
    with torch.no_grad():
      theirs = model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    ours = _our_features(official_file, x)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4,
                               atol=1e-5 * np.abs(ours).max())


def test_export_and_extract_features_commands(pretrained, tmp_path):
  workdir, idx = pretrained
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  r = subprocess.run(
      [sys.executable, '-m', 'byol_jax.export', f'--checkpoint={workdir}',
       f'--out={tmp_path / "enc.npz"}'], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'ResNet-18' in r.stdout
  feats_path = tmp_path / 'feats.npy'
  cmd = [sys.executable, '-m', 'byol_jax.tools.extract_features',
         f'--checkpoint={workdir}', '--dataset=fashion_mnist',
         '--split=test', f'--out={feats_path}', '--batch_size=16',
         f'--idx_dir={idx}']
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  feats, labels = np.load(feats_path), np.load(tmp_path / 'feats_labels.npy')
  assert feats.shape == (21, 32) and labels.tolist() == [i % 10 for i in
                                                         range(21)]
  apply_fn, variables = byol_jax.load_encoder(str(tmp_path / 'enc.npz'))
  assert json.loads(json.dumps(export.read_metadata(
      str(tmp_path / 'enc.npz'))))['model']['stem'] == 'small_pool'
  del apply_fn, variables
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode != 0 and 'exists' in r.stderr  # Never overwritten.
  # --out without .npy: np.save would write feats.npy; that name is checked.
  r = subprocess.run(cmd[:-3] + [f'--out={tmp_path / "feats"}'] + cmd[-2:],
                     cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode != 0 and f'{feats_path} exists' in r.stderr, \
      r.stderr[-2000:]
  assert np.array_equal(np.load(feats_path), feats)


def _tampered(src, dst, change):
  with np.load(src, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  change(arrays)
  with open(dst, 'wb') as f:
    np.savez(f, **arrays)
  return str(dst)


def test_load_encoder_refuses_what_it_cannot_run(pretrained, tmp_path):
  """NaN weights, missing or foreign metadata, and arrays of another
  network are refused when the file is loaded, not at first use."""
  good = export.export(str(pretrained[0]), str(tmp_path / 'enc.npz'))
  byol_jax.load_encoder(good)

  def nan(a):
    a['params/stem_conv/kernel'] = a['params/stem_conv/kernel'] * np.nan

  def deeper(a):
    meta = json.loads(str(a['__metadata__']))
    meta['model']['depth'] = 34
    a['__metadata__'] = np.array(json.dumps(meta))

  cases = [
      (nan, 'non-finite'), (deeper, 'needed by the network but missing'),
      (lambda a: a.pop('__metadata__'), 'is not a byol_jax encoder export'),
      (lambda a: a.update(__metadata__=np.array('{not json')),
       'is not a byol_jax encoder export'),
      (lambda a: a.update(__metadata__=np.array('[1]')), 'flax-layout'),
  ]
  for i, (change, message) in enumerate(cases):
    path = _tampered(good, tmp_path / f'bad{i}.npz', change)
    with pytest.raises(export.EncoderFileError, match=message):
      byol_jax.load_encoder(path)


def test_export_never_writes_through_a_symlink(pretrained, tmp_path):
  target = tmp_path / 'elsewhere.npz'
  link = tmp_path / 'enc.npz'
  link.symlink_to(target)  # Dangling.
  for overwrite in (False, True):
    with pytest.raises(FileExistsError, match='symbolic link'):
      export.export(str(pretrained[0]), str(link), overwrite=overwrite)
  assert not target.exists()


def test_official_pickle_is_refused_by_export_when_unsafe(tmp_path):
  bad = tmp_path / 'evil.pkl'
  bad.write_bytes(b'\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq'
                  b'\x01\x85q\x02Rq\x03.')
  with pytest.raises(official_weights.UnsafePickleError):
    export.export(str(bad), str(tmp_path / 'out.npz'))
  assert not (tmp_path / 'out.npz').exists()


def test_an_export_carries_its_preprocessing(pretrained, tmp_path):
  """The metadata holds size, channels, mean/std of the pretraining data;
  with raw_images=True apply_fn takes uint8 or [0, 1] images and normalises
  them itself (the same features as normalising by hand); wrong shapes get
  a message; an export from before this still loads, for normalised
  images only."""
  workdir, _ = pretrained
  path = export.export(str(workdir), str(tmp_path / 'enc.npz'))
  prep = export.read_metadata(path)['preprocessing']
  d = config_lib.base_config()
  config_lib.use_dataset(d, 'fashion_mnist')
  assert prep == {'image_size': 28, 'channels': 1,
                  'mean': list(d.dataset.mean), 'std': list(d.dataset.std),
                  'eval_crop_fraction': d.dataset.eval_crop_fraction}
  pixels = np.random.RandomState(0).randint(0, 256, (3, 28, 28, 1), np.uint8)
  normalised = ((pixels / 255.0 - np.array(prep['mean']))
                / np.array(prep['std'])).astype(np.float32)
  apply_fn, variables = byol_jax.load_encoder(path)
  raw_fn, _ = byol_jax.load_encoder(path, raw_images=True)
  want = np.asarray(apply_fn(variables, normalised))
  np.testing.assert_allclose(raw_fn(variables, pixels), want, atol=1e-5)
  np.testing.assert_allclose(raw_fn(variables, pixels / 255.0), want,
                             atol=1e-5)
  with pytest.raises(ValueError, match=r'add the channel axis'):
    apply_fn(variables, normalised[..., 0])
  with pytest.raises(ValueError, match=r'takes \(N, 28, 28, 1\) \(resize'):
    raw_fn(variables, np.zeros((2, 32, 32, 1), np.uint8))

  def older(a):
    meta = json.loads(str(a['__metadata__']))
    del meta['preprocessing']
    a['__metadata__'] = np.array(json.dumps(meta))

  old = _tampered(path, tmp_path / 'old.npz', older)
  old_fn, old_vars = byol_jax.load_encoder(old)
  np.testing.assert_allclose(old_fn(old_vars, normalised), want, atol=1e-6)
  with pytest.raises(export.EncoderFileError, match='before exports recorded'):
    byol_jax.load_encoder(old, raw_images=True)
