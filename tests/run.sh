#!/usr/bin/env bash
# run.sh — the integration tests (reference comparisons and CLI checks) that
# follow the cmocka unit tests in `make test`. Prints one summary line.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
ALLOY="$BUILD/alloy"
PY=/usr/bin/python3
pass=0; fail=0; failed=()

run() {  # name, command...
    local name=$1; shift
    echo "== $name"
    if "$@"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed+=("$name"); fi
}

run "merge reference (PyTorch)" $PY tests/ref/test_merge_ref.py "$ALLOY"
run "merge reference, O_DIRECT writes" env ALLOY_DIRECT_IO=1 $PY tests/ref/test_merge_ref.py "$ALLOY"
run "merge CLI" $PY tests/cli/test_merge_cli.py "$ALLOY"
for t in tests/ref/test_*.sh tests/cli/test_*.sh tests/peer/test_*.sh; do
    [ -e "$t" ] || continue
    run "$(basename "$t" .sh)" bash "$t" "$ALLOY"
done
for t in tests/tokenizer/conformance.sh; do
    [ -e "$t" ] || continue
    run "tokenizer conformance" bash "$t" "$BUILD"
done

echo
[ ${#failed[@]} -gt 0 ] && printf 'failed: %s\n' "${failed[@]}"
echo "integration: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
