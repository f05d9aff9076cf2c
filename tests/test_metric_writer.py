"""metrics.jsonl after crashes and resumes: unreadable lines never block a
run, a resumed run drops the records of the steps it does again."""

import json

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
