"""byol_jax.tools.plot_knn: the kNN-against-time clock across resumes."""

from byol_jax.tools import plot_knn

K = 'eval/knn_top1_k200'


def test_a_resumed_run_continues_the_first_process_clock():
  # The resumed process reaches its first kNN later on its own clock (100 s)
  # than the first process did (60 s): the clock did not go backwards, the
  # start time tells the processes apart.
  records = [
      {'step': 2, K: 0.5, 'wall_time_s': 30.0, 'process_start_s': 1000.0},
      {'step': 4, K: 0.6, 'wall_time_s': 60.0, 'process_start_s': 1000.0},
      {'step': 4, 'loss': 1.0},
      {'step': 6, K: 0.7, 'wall_time_s': 100.0, 'process_start_s': 2000.0},
      {'step': 8, K: 0.8, 'wall_time_s': 130.0, 'process_start_s': 2000.0},
  ]
  assert plot_knn.knn_points(records, K) == [
      (2, 30.0, 0.5), (4, 60.0, 0.6), (6, 160.0, 0.7), (8, 190.0, 0.8)]


def test_records_without_a_start_time_fall_back_to_the_clock_going_back():
  records = [{'step': 4, K: 0.6, 'wall_time_s': 60.0},
             {'step': 6, K: 0.7, 'wall_time_s': 20.0}]
  assert plot_knn.knn_points(records, K) == [(4, 60.0, 0.6), (6, 80.0, 0.7)]
