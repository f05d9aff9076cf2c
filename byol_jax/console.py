"""Console-script entry points (`byol-jax-train`, ...; pyproject.toml), and
how the command line reports a mistake: the message alone, no traceback."""

import sys
import types
from typing import Callable

from absl import app, flags, logging


class UserError(Exception):
  """An error whose message says what to change (a config value, a file, a
  workdir): the command line prints it without a traceback and exits 1.
  byol_jax's ConfigError, CheckpointMismatchError, ... derive from it."""


def _parse_flags(argv):
  """absl's flag parsing, where an override of a config field the config
  lacks (ml_collections raises AttributeError / KeyError, with "did you
  mean" where a name is close) ends with that message, not a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'FATAL Flags parsing error: {e}\nPass --helpshort or '
             '--helpfull to see help on flags.')
  except (AttributeError, KeyError) as e:
    inner = e
    while isinstance(inner, BaseException) and inner.args:
      inner = inner.args[0]  # ml_collections wraps KeyError in AttributeError.
    sys.exit(f'Unknown config field in a --config.* override: {inner}\n'
             'The config file defines the fields that can be set.')


def run(main: Callable, module: types.ModuleType) -> None:
  """`app.run(main)` as `python -m <module>` would run it (absl's `--help`
  shows the docstring and flags of the module named by sys.argv[0], which
  for a console script is pip's wrapper), with a `UserError` printed as its
  message and exit code 1."""
  if sys.modules['__main__'] is not module:
    sys.argv[0] = module.__name__
    sys.modules['__main__'].__doc__ = module.__doc__

  def guarded(argv):
    try:
      return main(argv)
    except UserError as e:
      logging.debug('Traceback of the error below:', exc_info=True)
      sys.exit(f'Error: {e}')
  app.run(guarded, flags_parser=_parse_flags)
