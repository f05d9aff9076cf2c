"""benchmarks/train_step.py's summary of its rounds: the ratio a line
reports is the median of within-round ratios (each JAX child beside the
PyTorch child of its own round), not a ratio of medians or of one pair."""

from helpers import load_benchmark


def _harness():
  return load_benchmark('train_step')


def _r(ips, plan=0.1):
  return {'images_per_s': ips, 'first_step_s': ips / 100,
          'conv_plan_s': plan}


def test_ratio_is_the_median_of_paired_rounds():
  # The machine drifts: PyTorch 1000 -> 1500 -> 800. Within each round JAX
  # runs at 0.7x, 0.8x, 1.1x of its neighbour.
  rounds = [(_r(1000), _r(700, plan=15.0)), (_r(1500), _r(1200)),
            (_r(800), _r(880))]
  line = _harness().summarize(rounds)
  assert line['ratio'] == 0.8
  assert (line['ratio_min'], line['ratio_max']) == (0.7, 1.1)
  # Not the ratio of the median speeds (880 / 1000); those medians are
  # reported per framework.
  assert line['torch']['images_per_s'] == 1000
  assert line['jax']['images_per_s'] == 880
  assert line['rounds'] == 3
  # The convolution timing of the first round (the empty-cache one).
  assert line['conv_plan_s_first'] == 15.0
  assert line['jax']['conv_plan_s'] == 0.1
  assert [r['jax'] for r in line['per_round']] == [700, 1200, 880]


def test_one_round_is_that_pair():
  line = _harness().summarize([(_r(750), _r(600))])
  assert line['ratio'] == line['ratio_min'] == line['ratio_max'] == 0.8
