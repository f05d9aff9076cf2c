"""The neighbours picture: nearest training images under the encoder, raw
pixels and the random init."""

import re
import subprocess
import sys

import numpy as np
from PIL import Image

from byol_jax.tools import neighbors
from helpers import ROOT, cli_env


def test_nearest_are_the_highest_cosine_similarities():
  rng = np.random.RandomState(0)
  queries, bank = rng.randn(7, 5), rng.randn(40, 5) * rng.rand(40, 1) * 9
  got = neighbors.nearest(queries, bank, 4)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
  want = np.argsort(-(unit(queries) @ unit(bank).T), axis=1)[:, :4]
  np.testing.assert_array_equal(got, want)
  labels = np.arange(40) % 3
  share = neighbors.agreement(labels[want[:, 0]], labels, want)
  assert share == np.mean(labels[want] == labels[want[:, :1]])


def test_the_neighbours_tool_on_a_tiny_run(pretrained, tmp_path):
  workdir, _ = pretrained
  out = tmp_path / 'neighbors.png'
  cmd = [sys.executable, '-m', 'byol_jax.tools.neighbors',
         f'--checkpoint={workdir}', f'--out={out}', '--bank=64',
         '--score_queries=21', '--num_queries=4', '--k=3',
         '--batch_size=16']
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                     env=cli_env(), timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  m = re.search(r"neighbours of the query's class, over 21 eval images: "
                r'encoder ([\d.]+)%, raw pixels ([\d.]+)%, random init '
                r'([\d.]+)%', r.stdout)
  assert m, r.stdout
  assert all(0 <= float(v) <= 100 for v in m.groups())
  width, height = Image.open(out).size
  assert width > height > 200  # 4 rows of 1 + 3 x 3 images.
  before = out.read_bytes()
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                     env=cli_env(), timeout=600)
  assert r.returncode != 0 and 'exists; choose another --out' in r.stderr
  assert out.read_bytes() == before
