"""Console-script entry points (`byol-jax-train`, ...; pyproject.toml), and
what a user sees: a mistake as its message alone (no traceback), progress
lines when called from Python, and the run's own log file."""

import contextlib
import logging as std_logging
import sys
import types
from typing import Callable, Iterator

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


def show_progress() -> None:
  """Called from Python (not under absl's app.run), absl logs only warnings:
  a script calling train_and_evaluate would see nothing for minutes. INFO
  there; under app.run, --verbosity stays the user's."""
  if not flags.FLAGS.is_parsed() and logging.get_verbosity() < logging.INFO:
    logging.set_verbosity(logging.INFO)


class QuietLibraries:
  """Drops INFO chatter of orbax and XLA's backend probing from the log, and
  orbax's warning that a directory we open read-only is read-only."""

  def filter(self, record):
    orbax = '/orbax/' in record.pathname
    if orbax and 'read only' in record.getMessage():
      return False
    noisy = orbax or 'xla_bridge' in record.pathname
    return record.levelno >= 30 or not noisy


@contextlib.contextmanager
def log_file(path: str) -> Iterator[None]:
  """Copies the log (absl's format) to `path`, appending, so a finished or
  failed run keeps its own log; an error that ends the run goes there with
  its full traceback (the terminal gets the message only)."""
  handler = _CopyHandler(path, mode='a', delay=True)
  handler.setFormatter(logging.PythonFormatter())
  handler.addFilter(QuietLibraries())
  root = std_logging.getLogger()
  root.addHandler(handler)
  try:
    yield
  except BaseException as e:
    if not (isinstance(e, SystemExit) and e.code in (0, None)):
      handler.handle(std_logging.makeLogRecord(dict(
          name='absl', levelno=std_logging.ERROR, levelname='ERROR',
          msg='The run ended with %s:', args=(type(e).__name__,),
          exc_info=sys.exc_info(), pathname=__file__, lineno=0)))
    raise
  finally:
    root.removeHandler(handler)
    with contextlib.suppress(OSError):  # E.g. the disk is full.
      handler.close()


class _CopyHandler(std_logging.FileHandler):
  """A log file that is a copy: failing to write it (a full disk) never
  fails the run or prints logging's own error report."""

  def handleError(self, record):
    del record
