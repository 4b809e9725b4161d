#!/usr/bin/env bash
# test_drm_lora.sh — `out: lora` merges of LoRA inputs (drm, knots, ties,
# linear) against the PyTorch reference in drm_lora_ref.py.
# Usage: test_drm_lora.sh ALLOY_BIN. Non-zero on failure.
set -u
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 tests/ref/drm_lora_ref.py "${1:-build/alloy}"
