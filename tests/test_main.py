"""The command line end to end, on tiny Fashion-MNIST-format idx files."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import (ROOT, cli as _cli, cli_command as _cli_command,
                     cli_env as _cli_env, saved_state as _saved_state,
                     write_fake_fashion_mnist)

@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('fmnist')
  write_fake_fashion_mnist(d, n_train=64, n_test=21)
  return d


def test_cli_trains_writes_everything_and_resumes(tmp_path, idx_dir):
  workdir = tmp_path / 'run'
  r = _cli(workdir, idx_dir, '--config.num_train_steps=4')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Weighted-kNN test accuracy' in r.stdout
  assert 'raw pixels' in r.stdout and 'random init' in r.stdout
  for name in ('metrics.jsonl', 'training_curves.png', 'tensorboard',
               'checkpoints/4', 'results/knn_step4.json'):
    assert (workdir / name).exists(), name
  records = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  logged = [r for r in records if 'loss' in r]
  assert [r['step'] for r in logged] == [2, 4]
  for key in ('lr', 'tau', 'collapse/normalized_std',
              'collapse/effective_rank', 'images_per_second'):
    assert key in logged[0]
  assert [r['epoch'] for r in logged] == [0.5, 1.0]  # 4 steps an epoch.
  # The run keeps its own log, in absl's format.
  log = (workdir / 'log.txt').read_text()
  assert 'train.py' in log and 'step 4/4 | loss' in log and 'Final:' in log
  result = json.load(open(workdir / 'results/knn_step4.json'))
  assert result['checkpoint_step'] == 4
  assert 0.0 <= result['metrics']['eval/knn_top1_k20'] <= 1.0
  assert 'ETA' in r.stderr

  # Same command with more steps: resumes from step 4, keeps earlier results.
  r = _cli(workdir, idx_dir, '--config.num_train_steps=6')
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Resumed from step 4' in r.stderr
  assert (workdir / 'results/knn_step4.json').exists()
  assert (workdir / 'results/knn_step6.json').exists()

  # kNN accuracy against wall time (byol_jax.tools.plot_knn): each kNN
  # record carries its process's clock; the resumed run's points continue
  # the first process's time; an existing PNG is never replaced.
  knn = [r for r in map(json.loads, open(workdir / 'metrics.jsonl'))
         if 'eval/knn_top1_k20' in r]
  assert [r['step'] for r in knn] == [4, 6]
  assert all(r['wall_time_s'] > 1 for r in knn)
  png = tmp_path / 'knn.png'
  plot = [sys.executable, '-m', 'byol_jax.tools.plot_knn', f'--out={png}',
          '--k=20', f'tiny={workdir}']
  p = subprocess.run(plot, cwd=ROOT, capture_output=True, text=True,
                     env=_cli_env(), timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  rows = [l.split() for l in p.stdout.splitlines()
          if l.startswith('tiny ') and l.split()[1].isdigit()]
  assert [int(r[1]) for r in rows] == [4, 6]
  minutes = [float(r[2]) for r in rows]
  assert minutes[1] > minutes[0] + knn[1]['wall_time_s'] / 60 - 0.01
  assert [r[1] for r in map(str.split, p.stdout.splitlines())
          if r[:1] == ['tiny'] and not r[1].isdigit()] == [
              'raw_pixels', 'random_init']
  assert png.read_bytes()[:4] == b'\x89PNG'
  p = subprocess.run(plot, cwd=ROOT, capture_output=True, text=True,
                     env=_cli_env(), timeout=300)
  assert p.returncode != 0 and 'exists; choose another --out' in p.stderr

  # (A second result of the same step gets a new name: tests/test_evaluate.)

  # A different model in the same workdir is refused, checkpoint untouched.
  before = sorted(os.listdir(workdir / 'checkpoints'))
  r = _cli(workdir, idx_dir, '--config.num_train_steps=8',
           '--config.model.width=0.125')
  assert r.returncode != 0
  assert 'written for a different model' in r.stderr
  assert 'model.width: saved 0.0625, config 0.125' in r.stderr
  assert sorted(os.listdir(workdir / 'checkpoints')) == before


def test_cli_rejects_bad_config_before_compiling(tmp_path, idx_dir):
  r = _cli(tmp_path / 'bad', idx_dir, '--config.batch_size=15',
           '--config.num_train_steps=2')
  assert r.returncode != 0
  assert 'batch_size=15 is not divisible by the 2 devices' in r.stderr


def test_second_run_on_a_busy_workdir_is_refused(tmp_path, idx_dir):
  """While one run holds the workdir (its lock, held here), the CLI refuses
  with a message, before writing anything; a dead holder leaves no lock."""
  from byol_jax import checkpointing
  workdir = tmp_path / 'run'
  with checkpointing.workdir_lock(str(workdir)):
    r = _cli(workdir, idx_dir, '--config.num_train_steps=2')
    assert r.returncode != 0
    assert 'Another run is using --workdir' in r.stderr
    assert f'pid {os.getpid()}' in r.stderr
    assert sorted(os.listdir(workdir)) == ['.lock']
  # Released (as the kernel does when a holder dies): the lock is free.
  with checkpointing.workdir_lock(str(workdir)):
    pass


def test_workdir_lock_dies_with_its_holder(tmp_path):
  """A holder killed with SIGKILL leaves no stale lock: the kernel drops it."""
  from byol_jax import checkpointing
  code = ('import sys, time; from byol_jax import checkpointing\n'
          f'with checkpointing.workdir_lock({str(tmp_path)!r}):\n'
          '  print("held", flush=True); time.sleep(600)\n')
  holder = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(checkpointing.WorkdirBusyError, match='Another run'):
      with checkpointing.workdir_lock(str(tmp_path)):
        pass
  finally:
    holder.kill()
    holder.wait()
  with checkpointing.workdir_lock(str(tmp_path)):
    pass


_KILL_AFTER_FIRST_SAVE = '''
import os, signal, sys
from byol_jax import checkpointing, main
_save = checkpointing.save
def save_then_die(manager, state, config):
  _save(manager, state, config)
  manager.wait_until_finished()
  os.kill(os.getpid(), signal.SIGKILL)  # Preempted right after step N.
checkpointing.save = save_then_die
sys.argv = sys.argv[1:]
main.run()
'''


def test_sigkill_and_resume_reaches_the_uninterrupted_state(tmp_path,
                                                            idx_dir):
  """Killed (SIGKILL) after the step-3 checkpoint and restarted, a run ends at
  step 6 with the same parameters, BN statistics, target and optimizer
  state as a run that was never interrupted: data order, augmentation and
  rng are functions of the step."""
  flags = ['--config.num_train_steps=6', '--config.checkpoint_every_steps=3',
           '--config.eval.baselines=False']
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  r = _cli(straight, idx_dir, *flags)
  assert r.returncode == 0, r.stderr[-3000:]
  # 64 images / batch 16: an epoch is 4 steps; the online probe's eval-split
  # accuracy is logged at the end of epoch 1 (step 4), kNN at the end.
  records = [json.loads(l) for l in open(straight / 'metrics.jsonl')]
  probe_steps = [r['step'] for r in records if 'eval/probe_top1' in r]
  assert probe_steps == [4, 6] and 'eval/probe_top5' in records[-1]
  assert 'online probe on the eval split' in r.stderr

  cmd = _cli_command(killed, idx_dir, *flags)
  r = subprocess.run([sys.executable, '-c', _KILL_AFTER_FIRST_SAVE,
                      *cmd[2:]], cwd=ROOT, capture_output=True, text=True,
                     env=_cli_env(), timeout=600)
  assert r.returncode == -9, r.stderr[-3000:]
  assert sorted(os.listdir(killed / 'checkpoints')) == ['3']

  r = _cli(killed, idx_dir, *flags)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Resumed from step 3' in r.stderr
  a, b = _saved_state(straight, 6), _saved_state(killed, 6)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _snapshot(directory):
  return {p: p.read_bytes() for p in sorted(directory.rglob('*'))
          if p.is_file()}


def test_nan_loss_and_corrupt_checkpoint_stop_without_touching_it(tmp_path,
                                                                  pretrained):
  """A diverging run stops naming the step; an unreadable checkpoint is
  refused with a message; neither overwrites the last good checkpoint."""
  workdir = tmp_path / 'run'
  shutil.copytree(pretrained[0], workdir)  # A finished 4-step run.
  idx_dir = pretrained[1]
  flags = ['--config.eval.baselines=False', '--config.checkpoint_every_steps=2']
  good = _snapshot(workdir / 'checkpoints')

  # Resumed with an absurd LR: the loss goes non-finite before step 6's save.
  r = _cli(workdir, idx_dir, '--config.num_train_steps=8', *flags,
           '--config.optimizer.base_lr=1e30')
  assert r.returncode != 0
  assert 'Loss is nan at step 6' in r.stderr or 'Loss is inf at step 6' in \
      r.stderr, r.stderr[-2000:]
  assert 'The last good checkpoint (step 4) is untouched' in r.stderr
  assert _snapshot(workdir / 'checkpoints') == good
  # From scratch, diverging before any save: said so (not "step None").
  r = _cli(tmp_path / 'fresh', idx_dir, '--config.num_train_steps=4', *flags,
           '--config.optimizer.base_lr=1e30')
  assert r.returncode != 0
  assert 'No checkpoint was written yet' in r.stderr, r.stderr[-2000:]
  assert 'Traceback' not in r.stderr

  # Corrupt every data file of the state; the run refuses to start.
  state_files = [p for p in good if '/state/' in str(p)
                 and p.stat().st_size > 100]
  assert state_files
  for p in state_files:
    p.write_bytes(b'\0' * p.stat().st_size)
  corrupt = _snapshot(workdir / 'checkpoints')
  r = _cli(workdir, idx_dir, '--config.num_train_steps=8', *flags)
  assert r.returncode != 0
  assert 'Could not read the checkpoint of step 4' in r.stderr, \
      r.stderr[-2000:]
  assert 'It was left untouched' in r.stderr
  assert _snapshot(workdir / 'checkpoints') == corrupt


# A real SIGTERM to the real process at a chosen moment: `checkpointing.save`
# is wrapped so that the process signals itself just before saving step N
# (the signal handler runs at once; the run then has to finish cleanly).
_TERM_BEFORE_SAVE = '''
import os, signal, sys
from byol_jax import checkpointing, main
_save, target = checkpointing.save, int(os.environ['TERM_AT_STEP'])
def term_then_save(manager, state, config):
  if int(state.step) == target:
    os.kill(os.getpid(), signal.SIGTERM)
  _save(manager, state, config)
checkpointing.save = term_then_save
sys.argv = sys.argv[1:]
main.run()
'''


def _term_run(workdir, idx_dir, step, *flags):
  cmd = _cli_command(workdir, idx_dir, *flags)
  return subprocess.run([sys.executable, '-c', _TERM_BEFORE_SAVE, *cmd[2:]],
                        cwd=ROOT, capture_output=True, text=True,
                        env=dict(_cli_env(), TERM_AT_STEP=str(step)),
                        timeout=600)


@pytest.mark.parametrize('case', ['final_save', 'periodic_save'])
def test_sigterm_anywhere_ends_in_one_durable_checkpoint(tmp_path, idx_dir,
                                                         case):
  """SIGTERM between the last step and the final save (it used to kill the
  run: no checkpoint, a rerun from step 0), or on a periodic checkpoint step
  (it used to save twice: StepAlreadyExistsError, exit 1): the step is saved
  once, the exit code is 128 + 15, and the same command finishes the run."""
  flags = ['--config.num_train_steps=4', '--config.eval.baselines=False',
           '--config.checkpoint_every_steps=2']
  step = 4 if case == 'final_save' else 2
  r = _term_run(tmp_path / 'run', idx_dir, step, *flags)
  assert r.returncode == 128 + 15, r.stderr[-3000:]
  assert f'Stopped by signal 15 at step {step}; checkpoint saved' in r.stderr
  assert 'StepAlreadyExistsError' not in r.stderr
  saved = sorted(os.listdir(tmp_path / 'run' / 'checkpoints'))
  assert saved == ['2', '4'][:1 + (step == 4)], saved
  assert not (tmp_path / 'run' / 'results').exists()
  r = _cli(tmp_path / 'run', idx_dir, *flags)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'Resumed from step {step}' in r.stderr
  assert (tmp_path / 'run' / 'results' / 'knn_step4.json').exists()
  # One record per logged step: the stopped attempt's are not repeated.
  steps = [json.loads(l)['step'] for l in open(tmp_path / 'run' /
                                                 'metrics.jsonl')
           if '"loss"' in l]
  assert steps == [2, 4]


def test_a_flipped_byte_in_a_checkpoint_is_refused_untouched(tmp_path,
                                                             pretrained):
  """orbax has no content check; the checksum recorded when a save was final
  catches a changed byte that would otherwise resume silently."""
  workdir = tmp_path / 'run'
  shutil.copytree(pretrained[0], workdir)  # A finished 4-step run.
  assert (workdir / 'checkpoint_checksums' / '4.json').exists()
  data = max((p for p in (workdir / 'checkpoints' / '4').rglob('*')
              if p.is_file() and '/state/' in str(p)),
             key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0x80
  data.write_bytes(bytes(raw))
  before = _snapshot(workdir / 'checkpoints')
  r = _cli(workdir, pretrained[1], '--config.num_train_steps=6',
           '--config.eval.baselines=False')
  assert r.returncode != 0
  assert ('Could not read the checkpoint of step 4' in r.stderr
          and 'differ from the checksums recorded when it was saved'
          in r.stderr), r.stderr[-2000:]
  assert 'Traceback' not in r.stderr
  assert _snapshot(workdir / 'checkpoints') == before


def test_mistakes_end_with_a_message_not_a_traceback(tmp_path, idx_dir):
  """Refused before anything is compiled or written; no traceback."""
  cases = [
      (['--config.optimizer.base_lr=-1', '--config.keep_checkpoints=0'],
       'optimizer.base_lr=-1.0 must be a finite number > 0'),
      (['--config.optimizer.base_lrr=1'],
       'Did you mean "base_lr" instead of "base_lrr"?'),
  ]
  for extra, message in cases:
    r = _cli(tmp_path / 'run', idx_dir, *extra)
    assert r.returncode != 0 and message in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / 'run').exists()
  # Found missing once the run started (the data): the message, and no
  # workdir left behind holding only a lock and a log.
  r = _cli(tmp_path / 'run', tmp_path / 'no_such_idx_dir')
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert 'Error: ' in r.stderr and 'no_such_idx_dir' in r.stderr
  assert not (tmp_path / 'run').exists()
  r = subprocess.run(_cli_command('', idx_dir), cwd=ROOT, capture_output=True,
                     text=True, env=_cli_env(), timeout=600)
  assert r.returncode != 0 and '--workdir is empty' in r.stderr
  # checkpoints/ is a file: refused up front (it used to start over and fail
  # minutes later), nothing written.
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'checkpoints').write_text('not a directory')
  r = _cli(tmp_path / 'run', idx_dir)
  assert r.returncode != 0 and 'checkpoints should be a directory' in r.stderr
  assert sorted(os.listdir(tmp_path / 'run')) == ['checkpoints']


_FILL_DISK_BEFORE_SAVE = '''
import os, sys
from byol_jax import checkpointing, main
_save, target = checkpointing.save, int(os.environ['FILL_AT_STEP'])
def fill_then_save(manager, state, config):
  if int(state.step) == target:
    checkpointing.finish(manager)  # The earlier save is complete first.
    fd = os.open(os.environ['FILLER'], os.O_WRONLY | os.O_CREAT)
    try:  # Unbuffered: nothing is left to flush (and fail) on close.
      while True:
        os.write(fd, bytes(1 << 16))
    except OSError:
      pass
    finally:  # Space for LEAVE bytes: the save then fails part-way.
      os.ftruncate(fd, max(0, os.fstat(fd).st_size - int(os.environ['LEAVE'])))
      os.close(fd)
  _save(manager, state, config)
checkpointing.save = fill_then_save
sys.argv = sys.argv[1:]
main.run()
'''


@pytest.mark.parametrize('leave', [0, 4096])
def test_a_full_disk_says_so_and_keeps_the_earlier_checkpoints(tmp_path,
                                                               idx_dir,
                                                               leave):
  """A real full disk (a small tmpfs, filled before the step-4 save, with no
  space left, or a page: then orbax's metadata is written and its array
  writers fail in their threads): the run ends with what happened and what
  is safe, not a RESOURCE_EXHAUSTED traceback; with space again the same
  command resumes from step 2."""
  disk = tmp_path / 'disk'
  disk.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs',
                     str(disk)], capture_output=True).returncode:
    pytest.skip('cannot mount a tmpfs here (needs root)')
  try:
    workdir = disk / 'run'
    flags = ['--config.num_train_steps=4', '--config.eval.baselines=False',
             '--config.checkpoint_every_steps=2']
    cmd = _cli_command(workdir, idx_dir, *flags)
    r = subprocess.run(
        [sys.executable, '-c', _FILL_DISK_BEFORE_SAVE, *cmd[2:]], cwd=ROOT,
        capture_output=True, text=True, timeout=600, env=dict(
            _cli_env(), FILL_AT_STEP='4', FILLER=str(disk / 'filler'),
            LEAVE=str(leave)))
    assert r.returncode == 1, r.stderr[-3000:]
    # orbax's background threads log their own errors (with tracebacks of
    # orbax's frames); the run waits for them to end, then ends with what
    # happened and what is safe, and no traceback of byol_jax's frames.
    # (Before, it could land inside a line a thread was still printing.)
    ours = re.findall(r'^Error: The disk holding .*', r.stderr, re.M)
    assert ours, r.stderr[-3000:]
    assert 'is full: the checkpoint of step 4 could not be' in ours[0]
    assert 'The earlier checkpoints (2) are intact' in ours[0]
    assert 'byol_jax/train.py' not in r.stderr
    (disk / 'filler').unlink()
    r = _cli(workdir, idx_dir, *flags)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Resumed from step 2' in r.stderr
  finally:
    subprocess.run(['umount', '-l', str(disk)], capture_output=True)
