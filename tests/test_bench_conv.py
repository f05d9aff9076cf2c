"""benchmarks/conv_impl.py (`make bench-conv`) runs end to end on a tiny
layer set: a header naming the machine and the matmul peak, then one row
per layer with each implementation's time (the two Winograd ones on
stride-1 layers only), the one 'auto' picks, and PyTorch's where torch is
installed."""

import importlib.util
import sys

from helpers import load_benchmark


def test_tiny_layer_set_prints_a_row_per_layer(monkeypatch, capsys):
  bench = load_benchmark('conv_impl')
  monkeypatch.setitem(bench.SHAPES, 'tiny', [(2, 8, 3, 4, 3, 1),
                                            (2, 8, 4, 8, 3, 2)])
  monkeypatch.setattr(bench, 'matmul_gflops', lambda: (12.5, None))
  monkeypatch.setattr(sys, 'argv', ['conv_impl.py', '--shapes=tiny',
                                    '--repeats=1'])
  bench.main()
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith('Measured on ')
  assert lines[1] == '2048x2048 fp32 matmul: JAX 12 GFLOP/s'
  header, rows = lines[2].split(), [l.split() for l in lines[3:]]
  assert [r[2:4] for r in rows] == [['8x8', '3->4'], ['8x8', '4->8']]
  # torch: the bench venv's (`make test`'s venv has none).
  with_torch = importlib.util.find_spec('torch') is not None
  assert ('torch' in header) == with_torch
  for r, stride in zip(rows, (1, 2)):
    # net b2 8x8 3->4 3x3/1 xla matmul wg2 wg4 auto xla/auto [torch ratio]
    assert len(r) == (13 if with_torch else 11)
    xla, mm = float(r[5]), float(r[6])
    times = {'xla': xla, 'matmul': mm}
    if stride == 1:
      times['winograd'], times['winograd4'] = float(r[7]), float(r[8])
    else:  # Winograd's F(m x m, 3x3) computes stride-1 layers only.
      assert r[7:9] == ['-', '-']
    assert all(t > 0 for t in times.values())
    auto, ratio = r[9], float(r[10].rstrip('x'))
    assert auto in times
    # The pick is the fastest unless within 3% of XLA's (to the printed
    # 0.01 ms); the speed-up is XLA's time over the pick's.
    best = min(times.values())
    if auto == 'xla':
      assert best >= 0.97 * xla - 0.02
    else:
      assert times[auto] <= best + 0.01 and times[auto] < 0.97 * xla + 0.02
    picked = times[auto]
    lo, hi = (xla - 0.005) / (picked + 0.005), (xla + 0.005) / (picked - 0.005)
    assert lo - 0.005 <= ratio <= hi + 0.005
    if with_torch:
      pt = float(r[11])
      assert (pt - 0.005) / (picked + 0.005) - 0.005 <= float(
          r[12].rstrip('x')) <= (pt + 0.005) / (picked - 0.005) + 0.005
