#!/usr/bin/env bash
# test_forward.sh — `alloy logits` against the PyTorch reference in
# model_ref.py, on random checkpoints made by `alloy init` from the configs in
# tests/data/configs (GQA 1/2/4/7, tied and untied, biases on and off,
# head_dim != hidden/heads, rope_theta 1e4 and 1e6, llama3 rope scaling,
# sliding windows, f32/bf16/f16). Each case runs with a prefill batch: 512
# (one sgemm prefill), 5 (chunked prefill over the KV cache) or 1 (token by
# token, the decode matvec). q/k weights are scaled x8 first so that
# attention is far from uniform (see model_ref.py sharpen). The reference
# computes in f64 from the same stored (rounded) weights, so bf16/f16 models
# are held to the f32 tolerance (1e-4 of max |logit|). Usage: test_forward.sh [ALLOY_BIN]. One line per
# case; non-zero on any failure.
set -u
cd "$(dirname "$0")/../.."
ALLOY=${1:-build/alloy}
PY=/usr/bin/python3
CFG=tests/data/configs
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
IDS20=5,17,99,3,250,42,7,7,180,64,1,230,11,90,33,128,200,8,76,150
IDS24=$IDS20,12,44,9,210

# name config dtype batch ids tolerance
CASES="
qwen2_gqa2_tied_f32       qwen2_gqa2_tied          f32  512 $IDS20 1e-4
qwen2_gqa2_tied_bf16_b1   qwen2_gqa2_tied          bf16 1   $IDS20 1e-4
llama_mha_untied_f32_b5   llama_mha_untied         f32  5   $IDS20 1e-4
llama_mha_untied_bf16     llama_mha_untied         bf16 512 $IDS20 1e-4
llama_mha_untied_f16_b1   llama_mha_untied         f16  1   $IDS20 1e-4
llama3_gqa7_hd16_bias_f32 llama3_gqa7_headdim_bias f32  512 $IDS24 1e-4
llama3_gqa7_hd16_bf16_b5  llama3_gqa7_headdim_bias bf16 5   $IDS24 1e-4
mistral_window5_bf16      mistral_window           bf16 512 $IDS24 1e-4
mistral_window5_f32_b1    mistral_window           f32  1   $IDS24 1e-4
qwen2_window6_untied_f32  qwen2_window_untied      f32  512 $IDS24 1e-4
qwen2_window6_bf16_b5     qwen2_window_untied      bf16 5   $IDS24 1e-4
"
fail=0
dirs=()
while read -r name cfg dtype batch ids tol; do
    [ -n "$name" ] || continue
    dir=$TMP/$cfg-$dtype
    [ -d "$dir" ] && continue
    "$ALLOY" init "$CFG/$cfg.json" "$dir" --seed 7 --dtype "$dtype" || { echo "FAIL $name: alloy init"; exit 1; }
    dirs+=("$dir")
done <<< "$CASES"
$PY tests/ref/model_ref.py sharpen "${dirs[@]}" || { echo "FAIL: sharpening q/k"; exit 1; }
args=()
while read -r name cfg dtype batch ids tol; do
    [ -n "$name" ] || continue
    dir=$TMP/$cfg-$dtype
    if ! "$ALLOY" logits -m "$dir" --ids "$ids" -o "$TMP/$name.npy" --batch "$batch"; then
        echo "FAIL $name: alloy logits"; fail=1; continue
    fi
    args+=("$name:$dir:$ids:$TMP/$name.npy:$tol")
done <<< "$CASES"
$PY tests/ref/model_ref.py "${args[@]}" || fail=1
exit $fail
