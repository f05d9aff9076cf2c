"""Writes tests/data/official_r18_dill034.pkl: an official-layout BYOL
ResNet-18 (width 1/16, heads 32 -> 16, 10 classes) checkpoint in the
encoding of dill 0.3.1-0.3.4 (arrays reached through dill's _import_module /
_get_attr), the dill of the 2020 released files. Made once with

  python -m venv /tmp/dill034 && /tmp/dill034/bin/pip install numpy dill==0.3.4
  /tmp/dill034/bin/python tests/data/make_dill034_fixture.py

(numpy 2.4, dill 0.3.4, Python 3.11). tests/test_official_weights.py rebuilds
the same values with official_layout(RandomState(34), ...) and checks them.
"""

import os
import sys

import dill
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from official_layout import official_layout, write_official_checkpoint  # noqa: E402  pylint: disable=g-import-not-at-top

KWARGS = dict(depth=18, width=1 / 16, hidden=32, out=16, classes=10)

if __name__ == '__main__':
  assert dill.__version__ == '0.3.4', dill.__version__
  params, state = official_layout(np.random.RandomState(34), **KWARGS)
  write_official_checkpoint(os.path.join(HERE, 'official_r18_dill034.pkl'),
                            params, state, dill.dump,
                            rng=np.array([0, 34], np.uint32))
