"""Console-script entry points (`byol-jax-train`, ...; pyproject.toml)."""

import sys
import types
from typing import Callable

from absl import app


def run(main: Callable, module: types.ModuleType) -> None:
  """`app.run(main)` as `python -m <module>` would run it. absl's `--help`
  shows the docstring and flags of the module named by sys.argv[0], which
  for a console script is pip's wrapper (no docstring, no flags)."""
  if sys.modules['__main__'] is not module:
    sys.argv[0] = module.__name__
    sys.modules['__main__'].__doc__ = module.__doc__
  app.run(main)
