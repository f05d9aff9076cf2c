"""metrics.jsonl after crashes and resumes: unreadable lines never block a
run, a resumed run drops the records of the steps it does again."""

import json

import numpy as np
import pytest

from byol_jax import metric_writer


def _write(path, lines):
  path.write_text(''.join(lines))


def test_an_unreadable_line_is_skipped_and_the_plot_still_written(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  _write(path, ['{"step": 1, "loss": 1.0}\n', '{"step": 2, "lo',  # Cut short.
                '\n', 'not json\n', '[1, 2]\n', '{"step": 3, "loss": 0.5}\n'])
  records = metric_writer.read_metrics(str(path))
  assert [r['step'] for r in records] == [1, 3]
  metric_writer.plot_curves(str(path), str(tmp_path / 'curves.png'))
  assert (tmp_path / 'curves.png').stat().st_size > 1000


def test_plotting_never_raises(tmp_path):
  """A plot that cannot be written is a warning, not a failed run."""
  path = tmp_path / 'metrics.jsonl'
  _write(path, ['{"step": 1, "loss": 1.0}\n'])
  metric_writer.plot_curves(str(path), str(tmp_path / 'no' / 'dir' / 'x.png'))
  metric_writer.plot_curves(str(tmp_path / 'missing.jsonl'),
                            str(tmp_path / 'y.png'))


def test_a_resumed_writer_drops_the_records_past_its_step(tmp_path):
  """An attempt that logged steps 2..6 and was killed after its step-4
  checkpoint: the resumed run (from 4) keeps 2 and 4 and logs 5, 6 anew,
  so the file describes one run."""
  path = tmp_path / 'metrics.jsonl'
  _write(path, [json.dumps({'step': s, 'loss': 1.0 / s}) + '\n'
                for s in (2, 4, 5, 6)] + ['{"step": 6, "eval/kn'])
  writer = metric_writer.MetricWriter(str(tmp_path), resume_step=4)
  for s in (5, 6):
    writer.write(s, {'loss': 0.0})
  writer.close()
  records = metric_writer.read_metrics(str(path))
  assert [(r['step'], r['loss']) for r in records] == [
      (2, 0.5), (4, 0.25), (5, 0.0), (6, 0.0)]
  # A fresh run (no checkpoint): nothing of an earlier attempt is kept.
  metric_writer.MetricWriter(str(tmp_path), resume_step=0).close()
  assert metric_writer.read_metrics(str(path)) == []


def test_the_curves_show_knn_with_labels_and_no_fake_final_dip():
  """The kNN keys are eval/knn_top1_k<k> (the plot once looked for
  eval/knn_top1 and drew none); a 1-step final interval after 100-step
  ones is left out of the training curves (its probe mean is noise)."""
  records = [{'step': s, 'loss': 1.0 / s, 'probe/train_top1': 0.7}
             for s in (100, 200, 300)]
  records += [{'step': 300, 'eval/knn_top1_k200': 0.80,
               'eval/knn_top1_k20': 0.82, 'eval/probe_top1': 0.75},
              {'step': 301, 'loss': 0.1, 'probe/train_top1': 0.1},
              {'step': 301, 'eval/knn_top1_k200': 0.81,
               'eval/knn_top1_k20': 0.83, 'eval/probe_top1': 0.76}]
  fig = metric_writer.curves_figure(records, 'byol_fashion_mnist')
  acc = fig.axes[5]
  lines = {l.get_label(): l for l in acc.get_lines()}
  assert set(lines) == {'probe/train_top1', 'eval/knn_top1_k20',
                        'eval/knn_top1_k200', 'eval/probe_top1'}
  assert list(lines['eval/knn_top1_k200'].get_ydata()) == [0.80, 0.81]
  assert list(lines['probe/train_top1'].get_xdata()) == [100, 200, 300]
  assert acc.get_ylabel() == 'top-1 accuracy'
  assert all(ax.get_ylabel() for ax in fig.axes)
  assert fig._suptitle.get_text() == 'byol_fashion_mnist (step 301)'


def test_writes_run_off_the_thread_in_order_and_errors_come_back(tmp_path):
  """Records are written by one writer thread, in order; flush waits for
  them; a write that failed there raises on the caller's thread."""
  writer = metric_writer.MetricWriter(str(tmp_path))
  for s in range(1, 51):
    writer.write(s, {'loss': 1.0 / s})
  writer.flush()
  assert [r['step'] for r in metric_writer.read_metrics(
      str(tmp_path / 'metrics.jsonl'))] == list(range(1, 51))
  (tmp_path / 'metrics.jsonl').unlink()
  (tmp_path / 'metrics.jsonl').mkdir()  # Appending to it now fails.
  writer.write(51, {'loss': 0.0})
  with pytest.raises(IsADirectoryError):
    writer.flush()
  writer.close()


def test_on_an_object_store_every_write_is_a_new_object():
  """gs:// cannot append: each write is one new object under
  metrics.parts/ (the file used to be rewritten whole on every write,
  quadratic over a run); reading and the resume cut see one run. Through
  TensorFlow's ram:// filesystem, which takes the object-store path."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  workdir = 'ram://metric_writer_test/run'
  writer = metric_writer.MetricWriter(workdir)
  for s in range(1, 6):
    writer.write(s, {'loss': 1.0 / s})
  writer.write(5, {'eval/knn_top1_k20': 0.5})
  writer.close()
  path = workdir + '/metrics.jsonl'
  assert not tf.io.gfile.exists(path)
  assert len(tf.io.gfile.listdir(workdir + '/metrics.parts')) == 6
  records = metric_writer.read_metrics(path)
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 5]
  assert records[-1] == {'step': 5, 'eval/knn_top1_k20': 0.5}
  metric_writer.MetricWriter(workdir, resume_step=3).close()
  assert [r['step'] for r in metric_writer.read_metrics(path)] == [1, 2, 3]


def test_interval_means_skip_the_steps_a_sampled_metric_was_not_computed():
  nan = float('nan')
  pending = [{'loss': 1.0, 'rank': nan}, {'loss': 2.0, 'rank': 6.0},
             {'loss': 3.0, 'rank': nan}, {'loss': 6.0, 'rank': 8.0}]
  assert metric_writer.mean_metrics(pending, sampled=('rank',)) == {
      'loss': 3.0, 'rank': 7.0}
  # An interval without a sample has no value, not a NaN or a zero.
  assert metric_writer.mean_metrics(pending[:1], sampled=('rank',)) == {
      'loss': 1.0}
  # Any other metric keeps its plain mean: one NaN loss makes the mean NaN
  # (what the loop's NaN stop looks at).
  out = metric_writer.mean_metrics([{'loss': nan}, {'loss': 1.0}],
                                   sampled=('rank',))
  assert np.isnan(out['loss'])
