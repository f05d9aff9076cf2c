"""Metrics out of the train loop: JSON lines, TensorBoard scalars, a PNG plot,
and result files.

Only process 0 writes (multi-host runs call this on every process). Files go
through tf.io.gfile, so a workdir may be local, NFS or an object store
(gs://...).
"""

from __future__ import annotations

import concurrent.futures
import io
import itertools
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import tensorflow as tf
from absl import logging


def write_result(workdir: str, name: str, record: Mapping[str, Any]) -> str:
  """Writes <workdir>/results/<name>.json (then <name>.2.json, ...): never
  overwrites an earlier result; locally even with runs finishing at once
  (O_EXCL). Returns the path (process 0 writes; other processes return '')."""
  if jax.process_index() != 0:
    return ''
  out_dir = os.path.join(workdir, 'results')
  tf.io.gfile.makedirs(out_dir)
  text = json.dumps(record, indent=2)
  for i in itertools.count(1):
    path = os.path.join(out_dir, f'{name}.json' if i == 1
                        else f'{name}.{i}.json')
    if '://' in path:  # Object stores have no exclusive create.
      if tf.io.gfile.exists(path):
        continue
      with tf.io.gfile.GFile(path, 'w') as f:
        f.write(text)
      return path
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
      continue
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return path


def mean_metrics(pending, sampled: Sequence[str] = ()) -> dict[str, float]:
  """Means of the per-step metric dicts of a logging interval: one host
  transfer for the whole interval.

  A key in `sampled` is NaN on the steps that did not compute it: its mean
  is over the steps that did, and it is left out of an interval without
  any. (Every other key keeps a plain mean, so a NaN loss stays NaN.)
  """
  host = jax.device_get(pending)
  out = {}
  for k in host[0]:
    values = np.array([m[k] for m in host], np.float64)
    if k in sampled:
      values = values[~np.isnan(values)]
      if not values.size:
        continue
    out[k] = float(np.mean(values))
  return out


def _append(path: str, text: str, step: int) -> None:
  """Appends to a local (or NFS) file; object stores cannot append, so
  there each write is a new object in metrics.parts/, named so that the
  names sort in write order: appending, not rewriting the file."""
  if '://' in path:
    tf.io.gfile.makedirs(_parts(path))
    name = f'{step:012d}-{time.time_ns():020d}.jsonl'
    with tf.io.gfile.GFile(os.path.join(_parts(path), name), 'w') as f:
      f.write(text)
  else:
    with open(path, 'a') as f:
      f.write(text)


def _parts(path: str) -> str:
  """<workdir>/metrics.parts for <workdir>/metrics.jsonl."""
  return os.path.splitext(path)[0] + '.parts'


def _part_files(path: str) -> list[str]:
  if '://' not in path or not tf.io.gfile.isdir(_parts(path)):
    return []
  return [os.path.join(_parts(path), n)
          for n in sorted(tf.io.gfile.listdir(_parts(path)))]


class MetricWriter:
  """Appends {'step': s, name: value, ...} records to <workdir>/metrics.jsonl
  and writes the same scalars to TensorBoard under <workdir>/tensorboard,
  off the training thread (one writer thread: records stay in order).
  `flush` waits for them (the loop flushes before each checkpoint, so the
  records of a checkpointed step are on disk with it) and raises a failed
  write's error.

  resume_step: the step the run starts from; records of later steps (logged
  by an earlier attempt before it stopped) are dropped, so the file
  describes one run."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    self._pool = concurrent.futures.ThreadPoolExecutor(
        1, thread_name_prefix='metric_writer')
    self._pending = []
    if self.enabled:
      tf.io.gfile.makedirs(workdir)
      _drop_records_after(self.path, resume_step)
      self._tb = tf.summary.create_file_writer(
          os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    self._pending.append(self._pool.submit(self._write, record))
    self._check(wait=False)

  def _write(self, record) -> None:
    _append(self.path, json.dumps(record) + '\n', record['step'])
    with self._tb.as_default(step=record['step']):
      for k, v in record.items():
        if k != 'step':
          tf.summary.scalar(k, v)
    self._tb.flush()

  def _check(self, wait: bool) -> None:
    if wait:
      concurrent.futures.wait(self._pending)
    done = [f for f in self._pending if f.done()]
    self._pending = [f for f in self._pending if not f.done()]
    for f in done:
      f.result()  # Raises the write's error here, on the training thread.

  def flush(self) -> None:
    self._check(wait=True)

  def close(self):
    try:
      self.flush()
    finally:
      self._pool.shutdown()
      if self._tb is not None:
        self._tb.close()


def _parse(lines):
  """(records, number of unreadable lines): a line cut short by a crash or
  edited by hand is skipped, never fatal."""
  records, bad = [], 0
  for line in lines:
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      bad += 1
      continue
    if isinstance(record, dict) and isinstance(record.get('step'), int):
      records.append(record)
    else:
      bad += 1
  return records, bad


def read_metrics(path: str) -> list[dict]:
  """The records of metrics.jsonl (and, on object stores, metrics.parts/)."""
  lines = []
  for name in ([path] if tf.io.gfile.exists(path) else []) + _part_files(
      path):
    with tf.io.gfile.GFile(name) as f:
      lines += f.readlines()
  records, bad = _parse(lines)
  if bad:
    logging.warning('%s: skipped %d unreadable line(s).', path, bad)
  return records


def _drop_records_after(path: str, step: int) -> None:
  for part in _part_files(path):  # <step>-<time>.jsonl
    if int(os.path.basename(part).split('-')[0]) > step:
      tf.io.gfile.remove(part)
  if not tf.io.gfile.exists(path):
    return
  with tf.io.gfile.GFile(path) as f:
    lines = f.readlines()
  keep = [line for line in lines
          if any(r['step'] <= step for r in _parse([line])[0])]
  if len(keep) == len(lines):
    return
  logging.info('%s: dropped %d record(s) past step %d (or unreadable), where '
               'this run resumes.', path, len(lines) - len(keep), step)
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(''.join(keep))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def plot_curves(metrics_path: str, out_path: str) -> None:
  """PNG of the training curves: loss, lr, tau, collapse std, accuracies.
  Never raises: a failed plot is a warning, not a failed run."""
  try:
    _plot_curves(metrics_path, out_path)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Could not plot %s to %s: %s', metrics_path, out_path, e)


def _plot_curves(metrics_path: str, out_path: str) -> None:
  run = os.path.basename(os.path.dirname(os.path.abspath(metrics_path))) \
      if '://' not in metrics_path else metrics_path.rsplit('/', 2)[-2]
  save_figure(curves_figure(read_metrics(metrics_path), run), out_path)


def curves_figure(records, run: str):
  """The 2 x 3 panels of training_curves.png, titled with the run's name."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  records = _without_short_last_interval(records)
  keys = sorted({k for r in records for k in r})
  knn = [k for k in keys if k.startswith('eval/knn_top1')]
  panels = [('loss', 'BYOL / SimSiam loss', ['loss']),
            ('learning rate', 'learning rate', ['lr']),
            ('tau', 'target EMA decay', ['tau']),
            ('collapse: std of l2-normalised z', 'std',
             ['collapse/normalized_std', 'collapse/healthy_std']),
            ('collapse: effective rank', 'rank', ['collapse/effective_rank']),
            ('accuracy', 'top-1 accuracy',
             ['probe/train_top1', *knn, 'eval/probe_top1'])]
  fig, axes = plt.subplots(2, 3, figsize=(13, 7))
  for ax, (title, ylabel, panel_keys) in zip(axes.flat, panels):
    for key in panel_keys:
      pts = [(r['step'], r[key]) for r in records if key in r]
      if pts:
        s, v = np.array(pts).T
        ax.plot(s, v, marker='o' if len(pts) < 20 else None, label=key)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.set_ylabel(ylabel)
    if ax.get_legend_handles_labels()[0] and len(panel_keys) > 1:
      ax.legend(fontsize=7)
  fig.suptitle(f'{run} (step {records[-1]["step"] if records else 0})')
  return fig


def _without_short_last_interval(records):
  """Drops the last training record when its logging interval is under
  half the usual one (e.g. 3 steps after 100-step intervals): its means
  are of a few steps' noise, and would draw a dip that is not there."""
  train = [i for i, r in enumerate(records) if 'loss' in r]
  if len(train) < 3:
    return records
  steps = [records[i]['step'] for i in train]
  gaps = np.diff(steps)
  if gaps[-1] < 0.5 * np.median(gaps[:-1]):
    return records[:train[-1]] + records[train[-1] + 1:]
  return records


def save_figure(fig, path: str) -> None:
  """Writes a matplotlib figure as PNG through tf.io.gfile (gs:// too) and
  closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png', dpi=90)
  plt.close(fig)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(png.getvalue())
