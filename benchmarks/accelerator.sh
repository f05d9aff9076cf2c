#!/usr/bin/env bash
# One-shot GPU/TPU host benchmark (benchmarks/accelerator.py): a markdown
# table in $OUT/accelerator.md (or --out=FILE), under 8 minutes.
#   bash benchmarks/accelerator.sh           # on the accelerator host
#   bash benchmarks/accelerator.sh --tiny    # CPU smoke mode (the tests run it)
# Uses .venv's Python when there is one (make setup), else python3 with
# byol_jax installed (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
out="${OUT:-.}/accelerator.md"
for a in "$@"; do [[ "$a" == --out=* ]] && out="${a#--out=}"; done
PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" benchmarks/accelerator.py --out="$out" "$@"
