"""Sources, the two-view training stream and the padded eval batches."""


import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from byol_jax import augment, input_pipeline as ip
from helpers import build_tfds_dataset, write_fake_fashion_mnist, write_idx

V1, V2 = augment.preset('byol_small')


def fmnist_config(idx_dir, source='auto'):
  return ml_collections.ConfigDict(dict(
      name='fashion_mnist', source=source, idx_dir=str(idx_dir), data_dir='',
      download=False, in_memory=True, path=''))


def test_read_idx_plain_and_gzipped(tmp_path):
  a = np.random.RandomState(1).randint(0, 256, (3, 4, 5))
  write_idx(tmp_path / 'a', a, compress=False)
  write_idx(tmp_path / 'b.gz', a, compress=True)
  np.testing.assert_array_equal(ip.read_idx(str(tmp_path / 'a')), a)
  np.testing.assert_array_equal(ip.read_idx(str(tmp_path / 'b.gz')), a)


def test_fashion_mnist_idx_source(tmp_path):
  write_fake_fashion_mnist(tmp_path)
  cfg = fmnist_config(tmp_path)
  assert ip.uses_idx(cfg)
  train, test = ip.load_source(cfg, 'train'), ip.load_source(cfg, 'test')
  assert train.images.shape == (64, 28, 28, 1) and train.images.dtype == np.uint8
  assert len(test) == 21 and test.labels[:3].tolist() == [0, 1, 2]


def test_missing_fashion_mnist_names_both_ways_to_get_it(tmp_path):
  with pytest.raises(ip.DatasetNotFoundError) as e:
    ip.load_fashion_mnist_idx(str(tmp_path), 'train')
  assert 'apt-get install dataset-fashion-mnist' in str(e.value)
  assert "tfds.load('fashion_mnist')" in str(e.value)


def test_missing_tfds_dataset_is_a_clear_error(tmp_path):
  cfg = fmnist_config(tmp_path / 'nowhere', source='tfds')
  cfg.data_dir = str(tmp_path / 'empty_tfds')
  with pytest.raises(ip.DatasetNotFoundError, match='apt-get install'):
    ip.load_source(cfg, 'train')


def test_tfds_source_under_mock_data():
  cfg = ml_collections.ConfigDict(dict(name='cifar10', source='auto',
                                       data_dir='', download=False,
                                       idx_dir='/nonexistent', in_memory=True,
                                       path=''))
  with tfds.testing.mock_data(num_examples=40):
    src = ip.load_source(cfg, 'train')
  assert src.images.shape == (40, 32, 32, 3) and src.labels.shape == (40,)


def _stream(source, **kw):
  args = dict(global_batch=8, seed=0, image_size=28, view1=V1, view2=V2,
              mean=(0.5,), std=(0.25,))
  args.update(kw)
  return ip.pretrain_dataset(source, **args).as_numpy_iterator()


def _labelled_source(n=20):
  rng = np.random.RandomState(0)
  return ip.ArraySource(rng.randint(0, 256, (n, 28, 28, 1)).astype(np.uint8),
                        np.arange(n, dtype=np.int32))  # label == index


def test_pretrain_batches_shapes_and_normalisation():
  batch = next(_stream(_labelled_source()))
  assert batch['view1'].shape == batch['view2'].shape == (8, 28, 28, 1)
  assert batch['view1'].dtype == np.float32 and batch['label'].dtype == np.int32
  # [0, 1] images normalised with mean 0.5, std 0.25 lie in [-2, 2].
  assert batch['view1'].min() >= -2 - 1e-5 and batch['view1'].max() <= 2 + 1e-5
  assert not np.allclose(batch['view1'], batch['view2'])


def test_each_epoch_is_a_permutation_and_epochs_differ():
  it = _stream(_labelled_source(), global_batch=4)  # 20 examples: 5 steps.
  epoch1 = np.concatenate([next(it)['label'] for _ in range(5)])
  epoch2 = np.concatenate([next(it)['label'] for _ in range(5)])
  assert sorted(epoch1) == list(range(20)) == sorted(epoch2)
  assert epoch1.tolist() != epoch2.tolist()


def test_resumed_stream_equals_uninterrupted_stream():
  src = _labelled_source()
  it = _stream(src)
  batches = [next(it) for _ in range(5)]
  resumed = next(_stream(src, start_step=3))
  for k in batches[3]:
    np.testing.assert_array_equal(batches[3][k], resumed[k])


def test_processes_get_disjoint_complete_slices_of_each_global_batch():
  src = _labelled_source()
  whole = [next(_stream(src, global_batch=8))]
  parts = [next(_stream(src, global_batch=8, process_index=i,
                        process_count=4)) for i in range(4)]
  assert all(len(p['label']) == 2 for p in parts)
  for k in ('label', 'view1', 'view2'):
    np.testing.assert_array_equal(
        np.concatenate([p[k] for p in parts]), whole[0][k])


def test_eval_batches_count_every_example_exactly_once():
  src = _labelled_source(n=21)
  batches = list(ip.eval_batches(src, global_batch=8, image_size=28,
                                 mean=(0.0,), std=(1.0,)))
  assert len(batches) == 3 and all(len(b['label']) == 8 for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  assert mask.sum() == 21
  assert labels[mask > 0].tolist() == list(range(21))
  # Images are the raw pixels scaled to [0, 1] (mean 0, std 1).
  np.testing.assert_allclose(batches[0]['image'][0],
                             src.images[0] / 255.0, atol=1e-6)


def test_eval_batches_split_across_processes():
  src = _labelled_source(n=21)
  per_proc = [list(ip.eval_batches(src, global_batch=8, image_size=28,
                                   mean=(0.0,), std=(1.0,), process_index=i,
                                   process_count=2)) for i in range(2)]
  labels = []
  for b0, b1 in zip(*per_proc):
    labels += [*b0['label'][b0['mask'] > 0], *b1['label'][b1['mask'] > 0]]
  assert labels == list(range(21))


def test_batch_not_divisible_by_processes_is_refused():
  with pytest.raises(ValueError, match='not divisible by the 3 processes'):
    _stream(_labelled_source(), global_batch=8, process_count=3)


def test_streamed_tfds_split_under_mock_data():
  """ImageNet-style lazy reading: every eval example once, exact resume."""
  cfg = ml_collections.ConfigDict(dict(
      name='cifar10', source='auto', data_dir='', download=False,
      idx_dir='/nonexistent', in_memory=False, path=''))
  common = dict(global_batch=8, seed=0, image_size=32, view1=V1, view2=V2,
                mean=(0.5,) * 3, std=(0.25,) * 3, shuffle_buffer=64)
  with tfds.testing.mock_data(num_examples=21):
    src = ip.load_source(cfg, 'test')
    assert isinstance(src, ip.StreamSource) and len(src) == 21
    assert ip.num_channels(src) == 3
    batches = list(ip.eval_batches(src, global_batch=8, image_size=32,
                                   mean=(0.0,) * 3, std=(1.0,) * 3))
    assert len(batches) == 3
    assert sum(b['mask'].sum() for b in batches) == 21
    assert batches[-1]['mask'].tolist() == [1.0] * 5 + [0.0] * 3
    it = ip.pretrain_dataset(src, **common).as_numpy_iterator()
    stream = [next(it) for _ in range(4)]
    resumed = next(ip.pretrain_dataset(src, start_step=3,
                                       **common).as_numpy_iterator())
  assert stream[0]['view1'].shape == (8, 32, 32, 3)
  for k in resumed:
    np.testing.assert_array_equal(stream[3][k], resumed[k])


@pytest.fixture(scope='module')
def local_tfds(tmp_path_factory):
  """A TFDS dataset built here: 200 training examples in 10 TFRecord
  shards, each with its id."""
  return build_tfds_dataset(tmp_path_factory.mktemp('tfds'), n_train=200,
                            num_shards=10)


def _ids(source, start_step, steps, process_index=0, process_count=1,
         local_batch=10, window=16):
  ds = ip._stream_examples(  # pylint: disable=protected-access
      source, 7, window, start_step, local_batch * process_count,
      local_batch, process_index * local_batch, process_index, process_count)
  return [(int(g), int(ex['id'])) for g, ex in
          ds.take(steps * local_batch).as_numpy_iterator()]


def test_a_stream_resumes_by_position_at_epoch_boundaries_and_mid_epoch(
    local_tfds):
  """Every epoch of a process's stream is a new permutation of its shard
  (TFDS's even split), the two processes' shards make up the split, and a
  stream started at step s is the uninterrupted stream from step s, at an
  epoch boundary (step 10 = 100 examples of a process) and inside an
  epoch and a shuffle window (step 13, step 27)."""
  source = ip.StreamSource(local_tfds, 'train', 200)
  assert ip._file_instructions(source, 0, 2)  # pylint: disable=protected-access
  whole = {p: _ids(source, 0, 32, p, 2) for p in (0, 1)}
  for p in (0, 1):
    ids = [i for _, i in whole[p]]
    epochs = [ids[k:k + 100] for k in (0, 100, 200)]
    assert all(sorted(e) == sorted(epochs[0]) for e in epochs)
    assert len(set(epochs[0])) == 100
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != sorted(epochs[0])  # Shuffled, not file order.
    # Global positions: process p holds slots p*10 .. p*10+9 of each batch.
    assert [g for g, _ in whole[p][:12]] == (
        list(range(p * 10, p * 10 + 10)) + [20 + p * 10, 21 + p * 10])
  assert set(whole[0][j][1] for j in range(100)) | set(
      whole[1][j][1] for j in range(100)) == set(range(200))
  for step in (10, 13, 27):
    for p in (0, 1):
      assert _ids(source, step, 5, p, 2) == whole[p][step * 10:step * 10 + 50]


def test_a_prepared_tfds_folder_is_a_dataset_name(local_tfds, tmp_path):
  """dataset.name may be the folder of a prepared TFDS dataset (read with
  tfds.builder_from_directory); a folder of images is pointed at
  dataset.path."""
  cfg = ml_collections.ConfigDict(dict(
      name=str(local_tfds.data_dir), source='auto', data_dir='',
      download=False, idx_dir='/nonexistent', in_memory=False, path=''))
  src = ip.load_source(cfg, 'train')
  assert isinstance(src, ip.StreamSource) and len(src) == 200
  assert ip.label_classes(src) == 5
  cfg.in_memory = True
  assert ip.load_source(cfg, 'test').images.shape == (30, 8, 8, 3)
  cfg.name = str(tmp_path)
  with pytest.raises(ip.DatasetNotFoundError,
                     match=f'use --config.dataset.path={tmp_path}'):
    ip.load_source(cfg, 'train')


def test_a_resumed_stream_gives_the_same_augmented_batches(local_tfds):
  source = ip.StreamSource(local_tfds, 'train', 200)
  common = dict(global_batch=8, seed=0, image_size=8, view1=V1, view2=V2,
                mean=(0.5,) * 3, std=(0.25,) * 3, shuffle_buffer=24)
  stream = list(ip.pretrain_dataset(source, **common).take(
      30).as_numpy_iterator())
  resumed = list(ip.pretrain_dataset(source, start_step=27,
                                     **common).take(3).as_numpy_iterator())
  for a, b in zip(stream[27:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_augment_chunk_divides_the_batch_and_fits_the_cache_budget():
  assert ip.augment_chunk(64, (224, 224, 3)) == 4
  assert ip.augment_chunk(60, (224, 224, 3)) == 4
  assert ip.augment_chunk(7, (224, 224, 3)) == 1  # prime batch
  assert ip.augment_chunk(128, (28, 28, 1)) == 128
  assert ip.augment_chunk(16, (1024, 1024, 3)) == 1


def test_subset_file_keeps_only_the_listed_examples_of_a_stream(tmp_path):
  """SimCLR-style subset files: a streamed TFDS split (mock ImageNet, which
  has a file_name feature) keeps exactly the listed examples, in training
  batches too."""
  cfg = ml_collections.ConfigDict(dict(
      name='imagenet2012', source='auto', data_dir='', download=False,
      idx_dir='/nonexistent', in_memory=False, path=''))
  with tfds.testing.mock_data(num_examples=12):
    src = ip.load_source(cfg, 'train')
    examples = list(tfds.as_numpy(src.examples(decode=False)))
    chosen = examples[1:9:2]
    (tmp_path / '1percent.txt').write_text(
        '\n'.join(ex['file_name'].decode() for ex in chosen) + '\n')
    subset = ip.labelled_subset(src, subset_file=str(tmp_path /
                                                     '1percent.txt'))
    assert len(subset) == 4
    kept = list(tfds.as_numpy(subset.examples(decode=False)))
    assert sorted(ex['file_name'] for ex in kept) == sorted(
        ex['file_name'] for ex in chosen)
    batch = next(ip.labelled_dataset(
        subset, view=augment.crop_flip_view(), global_batch=8, seed=0,
        image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
        shuffle_buffer=16).as_numpy_iterator())
  assert batch['image'].shape == (8, 32, 32, 3)
  assert set(batch['label'].tolist()) <= {int(ex['label']) for ex in chosen}


def test_hold_out_of_a_stream_is_its_first_examples_and_the_rest(local_tfds):
  source = ip.StreamSource(local_tfds, 'train', 200)
  kept, held = ip.hold_out(source, 30, seed=0)
  assert (len(kept), len(held)) == (170, 30)
  ids = lambda s: sorted(int(ex['id']) for ex in s.examples(
      decode=False).as_numpy_iterator())
  # The split's examples in index order: one file after another.
  in_order = [int(ex['id']) for ex in tfds.as_numpy(local_tfds.as_dataset(
      split='train', read_config=tfds.ReadConfig(interleave_cycle_length=1),
      decoders={'image': tfds.decode.SkipDecoding()}))]
  assert ids(held) == sorted(in_order[:30])
  assert ids(kept) == sorted(in_order[30:])
  with pytest.raises(ValueError, match='give a whole split'):
    ip.hold_out(held, 10, seed=0)


def test_hold_out_in_memory_is_class_balanced_disjoint_and_seeded():
  labels = np.repeat(np.arange(10), 100).astype(np.int32)
  # Each image's one pixel pair is its index: (i // 256, i % 256).
  index = np.arange(1000)
  source = ip.ArraySource(np.stack([index // 256, index % 256], -1).astype(
      np.uint8).reshape(1000, 1, 1, 2), labels)
  ids = lambda s: (s.images[:, 0, 0, 0].astype(int) * 256
                   + s.images[:, 0, 0, 1])
  kept, held = ip.hold_out(source, 200, seed=3)
  assert np.bincount(held.labels).tolist() == [20] * 10
  assert sorted(np.concatenate([ids(kept), ids(held)])) == list(index)
  assert np.array_equal(labels[ids(held)], held.labels)
  same, _ = ip.hold_out(source, 200, seed=3)
  other, _ = ip.hold_out(source, 200, seed=4)
  assert np.array_equal(kept.images, same.images)
  assert not np.array_equal(kept.images, other.images)
