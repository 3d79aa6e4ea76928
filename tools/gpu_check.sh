#!/usr/bin/env bash
# The GPU check of issue 14 on one CUDA GPU (under 8 minutes): prints one table, writes gpu_check.json.
# Logic and rows: tools/gpu_check.py (its --device cpu --tiny mode is the CPU smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
exec timeout 480 env PYTHONPATH="$PWD" "$PY" tools/gpu_check.py --device cuda --json gpu_check.json "$@"
