"""benchmarks/conv_impl.py (`make bench-conv`) runs end to end on a tiny
layer set: a header naming the machine and the matmul peak, then one row
per layer with both implementations' times, and PyTorch's where torch is
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
  for r in rows:  # net b2 8x8 3->4 3x3/1 xla matmul speed-up [torch ratio]
    assert len(r) == (10 if with_torch else 8)
    xla, mm, ratio = float(r[5]), float(r[6]), float(r[7].rstrip('x'))
    assert xla > 0 and mm > 0
    # The times are printed to 0.01 ms, the ratios from the exact ones.
    lo, hi = (xla - 0.005) / (mm + 0.005), (xla + 0.005) / (mm - 0.005)
    assert lo - 0.005 <= ratio <= hi + 0.005
    if with_torch:
      pt, best = float(r[8]), min(xla, mm)
      assert (pt - 0.005) / (best + 0.005) - 0.005 <= float(
          r[9].rstrip('x')) <= (pt + 0.005) / (best - 0.005) + 0.005
