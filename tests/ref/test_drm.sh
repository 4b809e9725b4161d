#!/usr/bin/env bash
# test_drm.sh — drm / tsv / knots merges and extract-lora against the PyTorch
# reference in drm_ref.py. Usage: test_drm.sh ALLOY_BIN. Non-zero on failure.
set -u
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 tests/ref/drm_ref.py "${1:-build/alloy}"
