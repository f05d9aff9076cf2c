r"""Weighted-kNN accuracy against wall time for pretraining runs, with the
baselines as lines.

  python -m byol_jax.tools.plot_knn --out=knn_vs_time.png \
      BYOL=runs/byol_fmnist_long SimSiam=runs/simsiam_fmnist_long

Each argument is LABEL=WORKDIR (or a bare WORKDIR, labelled by its name).
A run's points are its kNN evaluations (the periodic monitor and the final
one: metrics.jsonl records with `eval/knn_top1_k<K>`), placed at the
`wall_time_s` they carry: seconds since the training process started, so
set-up, the baselines and the evaluations count. A resumed run's clock
restarts; its later points are shifted by the last time the earlier process
recorded (the minutes between that point and the kill are not counted).
Baselines, from each run's result file (results/knn_step*.json): raw pixels
(dotted) and the run's own encoder at random initialisation (dashed, in the
run's colour, or grey for a value several runs share), one line per distinct
value. Prints the points as a table.
Never replaces an existing file.
"""

import glob
import json
import os
import sys

from absl import app, flags

from byol_jax import console, metric_writer

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when the command runs, so importing this module (tests,
  notebooks, the other commands) adds no flags."""
  flags.DEFINE_string('out', None, 'PNG to write (must not exist).')
  flags.DEFINE_integer('k', 200, 'Which kNN accuracy: eval/knn_top1_k<K>.')
  flags.DEFINE_string('title', '', 'Figure title (default: the metric).')
  flags.mark_flag_as_required('out')


def parse_run(arg: str) -> tuple[str, str]:
  """'LABEL=WORKDIR' or 'WORKDIR' -> (label, workdir)."""
  label, sep, workdir = arg.partition('=')
  if not sep:
    workdir = arg
    label = os.path.basename(os.path.normpath(arg))
  return label, workdir


def knn_points(records, key: str) -> list[tuple[int, float, float]]:
  """(step, seconds, accuracy) of each record with `key` and `wall_time_s`,
  the clock made continuous across resumes (see the module docstring)."""
  points, offset, last, process = [], 0.0, 0.0, None
  for r in records:
    if key not in r or 'wall_time_s' not in r:
      continue
    # A new process: its clock started again at 0. Told by the start time
    # each record carries (older records: by the clock going backwards).
    start = r.get('process_start_s')
    if (start != process if start is not None
        else r['wall_time_s'] + offset < last):
      offset = last
    process = start
    t = r['wall_time_s'] + offset
    last = t
    points.append((int(r['step']), t, float(r[key])))
  return points


def baselines(workdir: str, k: int) -> dict[str, float]:
  """raw_pixels / random_init kNN accuracies of the run's latest result."""
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'results',
                                            'knn_step*.json'))):
    with open(path) as f:
      metrics = json.load(f).get('metrics', {})
    for name in ('raw_pixels', 'random_init'):
      if f'{name}/knn_top1_k{k}' in metrics:
        out[name] = metrics[f'{name}/knn_top1_k{k}']
  return out


def figure(runs: dict[str, dict], k: int, title: str):
  """runs: label -> {'points': [(step, s, acc)], 'baselines': {...}}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 4.5))
  raw, init = set(), {}  # Baselines shared by several runs: one line each.
  for i, (label, run) in enumerate(runs.items()):
    _, t, acc = zip(*run['points'])
    ax.plot([s / 60 for s in t], acc, marker='o', color=f'C{i}', label=label)
    if 'random_init' in run['baselines']:
      init.setdefault(run['baselines']['random_init'], []).append(i)
    if 'raw_pixels' in run['baselines']:
      raw.add(run['baselines']['raw_pixels'])
  labels = list(runs)
  for v, users in sorted(init.items()):
    colour = f'C{users[0]}' if len(users) == 1 else 'grey'
    ax.axhline(v, color=colour, ls='--', lw=1, label='encoder at random init ('
               + ', '.join(labels[i] for i in users) + ')')
  for v in sorted(raw):
    ax.axhline(v, color='black', ls=':', lw=1, label='raw pixels')
  ax.set_xlim(left=0)  # From the process start: set-up time shows.
  ax.set_xlabel('wall time (minutes since the process started)')
  ax.set_ylabel(f'weighted kNN top-1 (k={k})')
  ax.set_title(title or f'weighted kNN (k={k}) test accuracy during training')
  ax.grid(alpha=0.3)
  # Outside the axes: the legend never hides a curve.
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  return fig


def main(argv):
  args = argv[1:]
  if not args:
    raise app.UsageError('Name at least one run: LABEL=WORKDIR ...')
  if os.path.lexists(FLAGS.out):
    raise app.UsageError(f'{FLAGS.out} exists; choose another --out.')
  key = f'eval/knn_top1_k{FLAGS.k}'
  runs = {}
  for arg in args:
    label, workdir = parse_run(arg)
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
      raise app.UsageError(f'{path} does not exist: give pretraining '
                           'workdirs.')
    points = knn_points(metric_writer.read_metrics(path), key)
    if not points:
      raise app.UsageError(
          f'{path} has no {key} record with a wall time: the run needs '
          'kNN evaluations (eval.knn_every_epochs / knn_every_steps, or its '
          'final evaluation) written by a byol_jax that records wall_time_s.')
    runs[label] = dict(points=points, baselines=baselines(workdir, FLAGS.k))
  print(f'{"run":<12} {"step":>7} {"minutes":>8} {key:>20}')
  for label, run in runs.items():
    for step, t, acc in run['points']:
      print(f'{label:<12} {step:>7} {t / 60:>8.2f} {acc:>20.4f}')
    for name, v in run['baselines'].items():
      print(f'{label:<12} {name:>16} {v:>20.4f}')
  metric_writer.save_figure(figure(runs, FLAGS.k, FLAGS.title), FLAGS.out)
  print(f'Wrote {FLAGS.out}')


def run():
  """Console-script entry point (`byol-jax-plot-knn`)."""
  _define_flags()
  console.run(main, sys.modules[__name__])


if __name__ == '__main__':
  run()
