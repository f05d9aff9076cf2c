"""Does clu (the metric writers / periodic actions of big_vision and scenic)
work with the JAX byol_jax installs? Prints each piece's outcome.

  .venv/bin/pip install clu==0.0.12 && .venv/bin/python benchmarks/clu_probe.py

What it showed (2026-12-02, clu 0.0.12, JAX 0.10.2): all three pieces work.
byol_jax still uses its own (docs/performance.md, "clu"): clu has no JSON
lines writer, and its writers would not give the object-store append or the
flush before each checkpoint that metric_writer.MetricWriter does.
"""

import contextlib
import os
import tempfile
import time

import jax
from clu import metric_writers, periodic_actions

workdir = tempfile.mkdtemp()
writer = metric_writers.create_default_writer(workdir, asynchronous=True)
writer.write_scalars(1, {'loss': 1.0})
writer.flush()
print('metric_writers.create_default_writer (async TensorBoard): ok',
      sorted(os.listdir(workdir)))
progress = periodic_actions.ReportProgress(num_train_steps=10, writer=writer,
                                           every_steps=2)
for step in range(1, 11):
  with progress.timed('eval') if step == 5 else contextlib.nullcontext():
    time.sleep(0.01)
  progress(step)
print('periodic_actions.ReportProgress (steps/s, with timed sections): ok')
profile = periodic_actions.Profile(logdir=workdir, num_profile_steps=2,
                                   first_profile=3)
for step in range(1, 8):
  profile(step)
writer.close()
print('periodic_actions.Profile: ok; jax', jax.__version__)
