"""JAX processes on loopback train exactly like one process with all their
devices: per-process input slices, a global batch assembled from
process-local data, cross-process gradient means and BatchNorm, only
process 0 writing logs, metrics and results."""

import json
import re
import socket
import subprocess

import jax
import numpy as np
import pytest

from helpers import write_fake_fashion_mnist
from helpers import (ROOT, cli_command as _cli_command, cli_env as _cli_env,
                     saved_state as _saved_state)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _two_processes(workdir, idx_dir, devices_each, *flags):
  """Runs the CLI as 2 processes x `devices_each` CPU devices over loopback;
  returns their (stdout, stderr)."""
  port = _free_port()
  procs = [subprocess.Popen(
      _cli_command(workdir, idx_dir, *flags, '--distributed',
                   f'--coordinator_address=localhost:{port}',
                   '--num_processes=2', f'--process_id={i}'),
      cwd=ROOT, env=_cli_env(devices_each), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  total = 2 * devices_each
  assert (f'Process 1 of 2, {devices_each} local / {total} global devices'
          in outs[1][1])
  # Only process 0 prints the result table.
  assert 'Weighted-kNN' in outs[0][0] and 'Weighted-kNN' not in outs[1][0]
  return outs


def _assert_same_run(single, multi, steps):
  a, b = _saved_state(single, steps), _saved_state(multi, steps)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 10
  # The same computation: the first logged metrics agree to float rounding,
  # later ones within what the rounding grows to (below).
  logs = [[json.loads(line) for line in open(d / 'metrics.jsonl')
           if '"loss"' in line] for d in (single, multi)]
  assert [r['step'] for r in logs[0]] == [r['step'] for r in logs[1]]
  assert logs[0][-1]['step'] == steps
  for i, (r1, r2) in enumerate(zip(*logs)):
    for key in ('loss', 'probe/loss', 'collapse/normalized_std', 'lr'):
      np.testing.assert_allclose(r2[key], r1[key], err_msg=key,
                                 rtol=1e-5 if i == 0 else 1e-3)
  # And the same state. gloo's cross-process sums add in another order; the
  # demo config's LR (0.5 on the BatchNorm scales and biases, which LARS
  # leaves unadapted) amplifies that to ~2e-3 on them after 3 steps (seen).
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-2,
                               atol=5e-3)
  # Only process 0 wrote the result.
  assert sorted(p.name for p in (multi / 'results').iterdir()) == [
      f'knn_step{steps}.json']


def test_two_processes_equal_one_process(tmp_path, pretrained):
  """2 processes x 1 device == the session's 1-process 2-device CLI run
  (`pretrained`: same flags, 4 steps), in the default suite."""
  single, idx_dir = pretrained
  multi = tmp_path / 'multi'
  _two_processes(multi, idx_dir, 1, '--config.num_train_steps=4')
  _assert_same_run(single, multi, 4)


@pytest.mark.slow  # Three CLI processes: ~3.5 min on 2 cores; `make test-slow`.
def test_two_processes_of_four_devices_equal_one_of_eight(tmp_path):
  idx_dir = tmp_path / 'fmnist'
  idx_dir.mkdir()
  write_fake_fashion_mnist(idx_dir, n_train=64, n_test=21)
  # A tenth of the demo's LR: LARS in the official order moves the (not
  # trust-ratio-bounded) BatchNorm parameters by lr x all gradients since
  # step 0, and at the demo's LR three steps grew gloo's summation order to
  # 1.5e-3 in the logged std.
  flags = ['--config.num_train_steps=3', '--config.eval.baselines=False',
           '--config.log_every_steps=1', '--config.optimizer.base_lr=1.6']
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  r = subprocess.run(_cli_command(single, idx_dir, *flags), cwd=ROOT,
                     env=_cli_env(8), capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  outs = _two_processes(multi, idx_dir, 4, *flags)
  # The same convolution plan (model.conv_impl='auto', read from the
  # session's cache): another plan rounds differently, which the LR below
  # grows past the tolerances.
  plans = [re.findall(r'^ +b\d+ .* -> (\w+)$', err, re.M)
           for err in (r.stderr, outs[0][1])]
  assert plans[0] and plans[0] == plans[1], plans
  _assert_same_run(single, multi, 3)


def _run(cmd, env, timeout=300):
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_processes_given_different_configs_are_refused_before_compiling(
    tmp_path, pretrained):
  """Batch 16 on one process and 32 on the other used to compile both and
  abort in a collective (SIGABRT); now both name the differing field."""
  _, idx_dir = pretrained
  port = _free_port()
  procs = [subprocess.Popen(
      _cli_command(tmp_path / 'run', idx_dir, '--config.num_train_steps=2',
                   f'--config.batch_size={batch}', '--distributed',
                   f'--coordinator_address=localhost:{port}',
                   '--num_processes=2', f'--process_id={i}'),
      cwd=ROOT, env=_cli_env(1), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i, batch in enumerate((16, 32))]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 1, err[-3000:]
    assert 'were given different configs: batch_size is' in err, err[-3000:]
    assert 'Traceback' not in err and 'Compiling' not in err
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_multi_host_flags_say_what_is_wrong(tmp_path, pretrained):
  _, idx_dir = pretrained
  base = _cli_command(tmp_path / 'run', idx_dir, '--config.num_train_steps=2')
  # Without --distributed these were ignored: the process trained alone.
  r = _run(base + ['--num_processes=2', '--process_id=1'], _cli_env(1))
  assert r.returncode != 0
  assert '--num_processes, --process_id need(s) --distributed' in r.stderr
  # A partner that never comes: a message at the timeout, not an abort.
  r = _run(base + ['--distributed', f'--coordinator_address=localhost:'
                   f'{_free_port()}', '--num_processes=2', '--process_id=1',
                   '--distributed_timeout_s=3'], _cli_env(1))
  assert r.returncode == 1, r.stderr[-2000:]
  assert 'not every process joined the coordinator at localhost' in r.stderr
  assert 'Joining the coordinator at localhost' in r.stderr
  # No cluster to detect and nothing given.
  r = _run(base + ['--distributed'], _cli_env(1))
  assert r.returncode == 1, r.stderr[-2000:]
  assert '--distributed found no cluster to join' in r.stderr
  assert 'Traceback' not in r.stderr
  assert not (tmp_path / 'run').exists()
