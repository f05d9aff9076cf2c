"""What an installer sees: the console scripts resolve, the Python floor is
JAX's, the lock file pins every dependency inside pyproject's ranges, and no
file of the repository points at a path outside it."""

import os
import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def _pyproject():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def _lock():
  pins = {}
  with open(os.path.join(ROOT, 'requirements', 'lock.txt')) as f:
    for line in f:
      if line.strip() and not line.startswith('#'):
        name, version = line.strip().split('==')
        pins[re.sub(r'[-_.]+', '-', name).lower()] = version
  return pins


def test_every_console_script_is_a_callable_entry_point():
  """All the scripts' modules import into one process (pytest collects
  them together), and a tool adds its flags only when it runs: two tools
  defining --out at import time collided."""
  scripts = _pyproject()['scripts']
  assert {'byol-jax-train', 'byol-jax-evaluate', 'byol-jax-export',
          'byol-jax-extract-features', 'byol-jax-show-augmentations',
          'byol-jax-ablate', 'byol-jax-neighbors',
          'byol-jax-plot-knn'} <= set(scripts)
  code = '\n'.join([
      'import importlib',
      'from absl import flags',
      f'for target in {sorted(scripts.values())!r}:',
      '  module, func = target.split(":")',
      '  assert callable(getattr(importlib.import_module(module), func))',
      # byol_jax.cli's --distributed etc. are every command's.
      'print(sorted(f"{m}:{n}" for n in flags.FLAGS',
      '             if (m := flags.FLAGS.find_module_defining_flag(n) or "")',
      '             .startswith("byol_jax") and m != "byol_jax.cli"))'])
  r = subprocess.run([sys.executable, '-c', code], capture_output=True,
                     text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip().splitlines()[-1] == '[]', r.stdout


def test_python_floor_is_jaxs():
  assert _pyproject()['requires-python'] == '>=3.11'
  assert sys.version_info >= (3, 11)


def test_lock_pins_every_dependency_inside_its_range():
  project, pins = _pyproject(), _lock()
  requirements = [Requirement(r) for r in project['dependencies']
                  + project['optional-dependencies']['test']]
  for req in requirements:
    name = re.sub(r'[-_.]+', '-', req.name).lower()
    assert name in pins, f'{req.name} is not in requirements/lock.txt'
    assert req.specifier.contains(pins[name]), (str(req), pins[name])
    assert any(s.operator == '<' for s in req.specifier) or req.name in (
        'pytest', 'dill'), f'{req} has no upper bound'


def test_no_file_points_outside_the_repository():
  """Docs, code and tests cite papers and the official code, never a
  sibling folder of the checkout."""
  patterns = ['../' + 'shared', 'spec' + '.md', 'shared/' + 'reference',
              'shared/' + 'seeds']
  found = []
  for top in ('byol_jax', 'tests', 'docs', 'configs', 'benchmarks', 'launch',
              '.ci'):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for name in files:
        if name.endswith(('.py', '.md', '.sh', '.sbatch', '.txt', '')):
          path = os.path.join(dirpath, name)
          try:
            text = open(path, encoding='utf-8').read()
          except (UnicodeDecodeError, IsADirectoryError):
            continue
          found += [f'{os.path.relpath(path, ROOT)}: {p}' for p in patterns
                    if p in text]
  for name in ('README.md', 'Makefile', 'pyproject.toml'):
    text = open(os.path.join(ROOT, name)).read()
    found += [f'{name}: {p}' for p in patterns if p in text]
  assert not found, found


def test_console_script_help_shows_the_modules_flags():
  """`byol-jax-train --help` (pip's wrapper script) shows byol_jax.main's
  docstring and flags, as `python -m byol_jax.main --help` does."""
  script = os.path.join(os.path.dirname(sys.executable), 'byol-jax-train')
  assert os.path.exists(script), 'install the package (make setup)'
  r = subprocess.run([script, '--help'], capture_output=True, text=True,
                     timeout=120)
  out = r.stdout + r.stderr
  assert 'pretrain BYOL / SimSiam' in out and '--workdir' in out, out[-2000:]


def test_main_help_loads_neither_tensorflow_nor_jax():
  """--help answers without TensorFlow's ~5-18 s import: byol_jax.main
  imports the trainer only when it runs."""
  r = subprocess.run([sys.executable, '-c', (
      'import sys, byol_jax.main; '
      'print(sorted(m for m in ("tensorflow", "jax") if m in sys.modules))')],
                     capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip() == '[]', r.stdout
