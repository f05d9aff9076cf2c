"""benchmarks/accelerator.sh in its tiny CPU mode: the script a GPU/TPU host
runs once must not rot between the times one is at hand."""

import os
import re
import subprocess

import pytest

from helpers import ROOT, cli_env

ROWS = [
    r'\| float32 matmul peak \(512\^2, one device\) \| [\d.]+ TFLOP/s \|',
    r'\| bfloat16 matmul peak \(512\^2, one device\) \| [\d.]+ TFLOP/s \|',
    r'\| BYOL step float32, ResNet-18 width 0.0625, 32 px \| [\d.]+ img/s \| '
    r'batch 8 x 2; [\d.e-]+ GFLOP/step/device, .* MFU [\d.]+% ',
    r'\| BYOL step bfloat16, ResNet-18 width 0.0625, 32 px \| [\d.]+ img/s \|',
    r'\| on-device augmentation, both views, 32 px \| \d+ img/s \|',
    r'\| tf.data input, two views, 32 px, \d+ host cores \| \d+ img/s \|',
    r'\| step on 2 devices == on 1 \(global batch 16\) \| pass \|',
    r'\| bfloat16 step: finite, loss within 5% of float32 \| pass \|',
]


@pytest.mark.slow
def test_the_accelerator_script_runs_in_tiny_mode(tmp_path):
  out = tmp_path / 'accelerator.md'
  r = subprocess.run(['bash', 'benchmarks/accelerator.sh', '--tiny',
                      f'--out={out}'], cwd=ROOT, env=cli_env(devices=2),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  table = out.read_text()
  assert table.startswith('# Accelerator benchmark: 2 x cpu (cpu)')
  for row in ROWS:
    assert re.search(row, table), (row, table)
  assert 'failed' not in table and 'not run' not in table


def test_the_accelerator_script_says_what_did_not_run(tmp_path):
  """A spent time budget leaves every section's row, marked 'not run'."""
  out = tmp_path / 'accelerator.md'
  r = subprocess.run(['bash', 'benchmarks/accelerator.sh', '--tiny',
                      '--budget_s=0', f'--out={out}'], cwd=ROOT,
                     env=cli_env(devices=1), capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  table = out.read_text()
  assert table.count('| not run | time budget (--budget_s) spent |') == 6
  assert os.path.exists(out)
