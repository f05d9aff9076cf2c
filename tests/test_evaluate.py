"""The evaluation command line: a run end to end, and evaluations killed or
stopped mid-way that the same command resumes to the same classifier."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import ROOT, cli_env, files, saved_state


def test_evaluate_command_line(pretrained):
  workdir, idx = pretrained
  r = subprocess.run(
      [sys.executable, '-m', 'byol_jax.evaluate', '--mode=linear',
       f'--checkpoint={workdir}',
       '--config=configs/linear_eval_fashion_mnist.py',
       f'--config.dataset.idx_dir={idx}', '--config.batch_size=16',
       '--config.eval.batch_size=16', '--config.num_epochs=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=cli_env())
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'linear evaluation of step 4 on fashion_mnist: top1' in r.stdout
  assert 'RESULT linear step 4' in r.stderr
  path = r.stdout.strip().rsplit('written to ', 1)[1]
  assert json.load(open(path))['checkpoint_step'] == 4


_SIGNAL_AT_SAVE = '''
import os, signal, sys
from byol_jax import checkpointing, evaluate
_save, at = checkpointing.save, int(os.environ['AT_STEP'])
sig = getattr(signal, os.environ['SIGNAL'])
def save_and_signal(manager, state, config):
  if int(state.step) == at and sig == signal.SIGTERM:
    os.kill(os.getpid(), sig)  # Preempted at this step: the loop saves, exits.
  _save(manager, state, config)
  if int(state.step) == at and sig == signal.SIGKILL:
    manager.wait_until_finished()
    os.kill(os.getpid(), sig)  # Killed right after this checkpoint.
checkpointing.save = save_and_signal
sys.argv = sys.argv[1:]
evaluate.run_cli()
'''


def _evaluate_cli(workdir, idx, mode, config, *extra, signal_at=None):
  cmd = [f'--mode={mode}', f'--checkpoint={workdir}',
         f'--config=configs/{config}', f'--config.dataset.idx_dir={idx}',
         '--config.batch_size=16', '--config.eval.batch_size=16',
         '--config.log_every_steps=2', '--config.checkpoint_every_steps=2',
         *extra]
  env = cli_env()
  if signal_at is None:
    cmd = [sys.executable, '-m', 'byol_jax.evaluate', *cmd]
  else:
    cmd = [sys.executable, '-c', _SIGNAL_AT_SAVE, 'evaluate', *cmd]
    env.update(AT_STEP=str(signal_at[0]), SIGNAL=signal_at[1])
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=env)


@pytest.mark.parametrize('mode,config,extra,name', [
    ('linear', 'linear_eval_fashion_mnist.py', ('--config.num_epochs=2',),
     'linear_step4'),
    ('finetune', 'finetune_fashion_mnist.py',
     ('--config.num_epochs=4', '--config.subset.fraction=0.5'),
     'finetune_50pct_step4')])
def test_a_killed_evaluation_resumes_to_the_same_classifier(
    pretrained, tmp_path, mode, config, extra, name):
  """SIGKILL after the step-2 checkpoint, then SIGTERM at step 4 (saved, exit
  143), then the same command: the classifier (head, fine-tuned encoder,
  optimizer state) and the test accuracy are bitwise those of a run never
  interrupted, and the pretraining checkpoint is untouched."""
  source, idx = pretrained
  straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
  for w in (straight, stopped):  # The checkpoint only (no earlier evals).
    for d in ('checkpoints', 'checkpoint_checksums'):
      shutil.copytree(source / d, w / d)
  before = files(stopped / 'checkpoints')
  r = _evaluate_cli(straight, idx, mode, config, *extra)
  assert r.returncode == 0, r.stderr[-3000:]
  r = _evaluate_cli(stopped, idx, mode, config, *extra,
                    signal_at=(2, 'SIGKILL'))
  assert r.returncode == -9, r.stderr[-3000:]
  r = _evaluate_cli(stopped, idx, mode, config, *extra,
                    signal_at=(4, 'SIGTERM'))
  assert r.returncode == 128 + 15, r.stderr[-3000:]
  assert 'Resumed the classifier from step 2' in r.stderr
  assert 'Stopped by signal 15 at step 4; checkpoint saved' in r.stderr
  assert not list((stopped / 'results').glob(f'{name}*'))  # Not finished.
  r = _evaluate_cli(stopped, idx, mode, config, *extra)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Resumed the classifier from step 4' in r.stderr
  eval_dir = lambda w: w / 'eval' / name
  steps = sorted(int(p.name) for p in (eval_dir(straight) / 'checkpoints')
                 .iterdir() if p.name.isdigit())
  last = steps[-1]
  assert last > 4
  a, b = (saved_state(eval_dir(w), last) for w in (straight, stopped))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  result = lambda w: json.load(open(w / 'results' / f'{name}.json'))
  assert result(straight)['metrics'] == result(stopped)['metrics']
  # One record per logged step, as if never interrupted.
  logged = lambda w: [json.loads(l)['step'] for l in open(
      eval_dir(w) / 'metrics.jsonl')]
  assert logged(stopped) == logged(straight)
  assert files(stopped / 'checkpoints') == before
