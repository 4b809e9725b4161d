#!/usr/bin/env bash
# test_train.sh — `alloy train` against the PyTorch reference (tests/ref/train_ref.py):
# loss, every gradient and the parameters after 3 AdamW steps (full and LoRA, Qwen2 and
# Llama, tied/untied, f32/bf16), memorisation of a short text, resume after an
# interruption, jsonl prompt masking, and bad inputs. Usage: bash test_train.sh build/alloy
set -u
ALLOY=$(realpath "${1:-build/alloy}")
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)
REF="$PY $HERE/train_ref.py"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAIL: $*"; fail=1; }
train() { "$ALLOY" train --threads 1 --log-every 1000 "$@"; }

$REF make-model "$T/qwen" --arch qwen2 --tied --seed 1 --vocab 300 || exit 1
$REF make-model "$T/llama" --arch llama --bias --seed 2 --vocab 263 --dtype bf16 || exit 1
cat > "$T/a.txt" <<'EOF'
the quick brown fox jumps over the lazy dog. then the end.
in the beginning there was the word, and the word was with the others.
EOF

echo "-- reference: full fine-tuning, Qwen2 (q/k/v bias, tied embeddings), f32"
train -m "$T/qwen" -d "$T/a.txt" -o "$T/q_full" --full --steps 3 --batch 2 --ctx 16 --lr 1e-3 \
    --warmup 1 --weight-decay 0.1 --dump-ref "$T/d1" 2>/dev/null || bad "train failed"
$REF compare "$T/d1" "$T/qwen" --mode full --lr 1e-3 --warmup 1 --wd 0.1 --clip 1.0 && ok "full qwen2" || bad "full qwen2"

echo "-- reference: full fine-tuning, Llama (attention_bias, untied), bf16 base"
train -m "$T/llama" -d "$T/a.txt" -o "$T/l_full" --full --steps 3 --batch 2 --ctx 16 --lr 1e-3 \
    --grad-clip 0.5 --dump-ref "$T/d2" 2>/dev/null || bad "train failed"
$REF compare "$T/d2" "$T/llama" --mode full --lr 1e-3 --clip 0.5 && ok "full llama" || bad "full llama"
$PY - "$T/l_full" <<'EOF' && ok "full output keeps bf16, config and tokenizer" || bad "full output"
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath("tests/ref/st.py")))
d = sys.argv[1]
raw = open(os.path.join(d, "model.safetensors"), "rb").read()
n = int.from_bytes(raw[:8], "little")
h = json.loads(raw[8:8 + n])
assert all(v["dtype"] == "BF16" for k, v in h.items() if k != "__metadata__"), "dtype"
assert "lm_head.weight" in h and "model.layers.1.self_attn.o_proj.bias" in h
assert json.load(open(os.path.join(d, "config.json")))["torch_dtype"] == "bfloat16"
assert os.path.exists(os.path.join(d, "tokenizer.json"))
EOF

echo "-- reference: LoRA, all seven targets (Qwen2) and a subset (Llama)"
train -m "$T/qwen" -d "$T/a.txt" -o "$T/q_lora" --steps 3 --batch 2 --ctx 16 --lr 1e-2 --lora-rank 4 \
    --lora-alpha 8 --weight-decay 0.01 --warmup 2 --dump-ref "$T/d3" 2>/dev/null || bad "train failed"
$REF compare "$T/d3" "$T/qwen" --mode lora --rank 4 --alpha 8 --lr 1e-2 --wd 0.01 --warmup 2 --clip 1.0 \
    && ok "lora qwen2" || bad "lora qwen2"
train -m "$T/llama" -d "$T/a.txt" -o "$T/l_lora" --steps 3 --batch 2 --ctx 16 --lr 1e-2 --lora-rank 2 \
    --lora-alpha 16 --lora-targets q_proj,v_proj,down_proj --dump-ref "$T/d4" 2>/dev/null || bad "train failed"
$REF compare "$T/d4" "$T/llama" --mode lora --rank 2 --alpha 16 --targets q_proj,v_proj,down_proj --lr 1e-2 \
    --clip 1.0 && ok "lora llama" || bad "lora llama"
$PY - "$T/q_lora" <<'EOF' && ok "PEFT adapter layout" || bad "PEFT adapter layout"
import json, os, sys
d = sys.argv[1]
c = json.load(open(os.path.join(d, "adapter_config.json")))
assert c["r"] == 4 and c["lora_alpha"] == 8 and c["peft_type"] == "LORA" and len(c["target_modules"]) == 7
raw = open(os.path.join(d, "adapter_model.safetensors"), "rb").read()
h = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
a = h["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"]
b = h["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
assert a["shape"] == [4, 96] and b["shape"] == [32, 4], (a, b)
assert len([k for k in h if k != "__metadata__"]) == 2 * 7 * 2
EOF

echo "-- memorisation: a tiny model learns a short text to near-zero loss"
printf 'alloy trains tiny models in C.\n' > "$T/short.txt"
out=$(train -m "$T/qwen" -d "$T/short.txt" -o "$T/mem" --full --steps 150 --batch 1 --ctx 32 --lr 1e-2 \
      --warmup 10 --log-every 150 2>&1) || bad "memorisation run failed"
loss=$(echo "$out" | grep -o 'loss [0-9.]*' | tail -1 | cut -d' ' -f2)
$PY -c "import sys; sys.exit(0 if float('$loss') < 0.05 else 1)" && ok "final loss $loss < 0.05" \
    || bad "final loss $loss not < 0.05"

echo "-- resume: interrupted at step 3 of 6, resumed, same adapter as one run"
train -m "$T/qwen" -d "$T/a.txt" -o "$T/r_once" --steps 6 --batch 2 --ctx 16 --lr 1e-2 --lora-rank 4 2>/dev/null
train -m "$T/qwen" -d "$T/a.txt" -o "$T/r_two" --steps 6 --batch 2 --ctx 16 --lr 1e-2 --lora-rank 4 \
    --save-every 3 --stop-after 3 2>/dev/null
[ -f "$T/r_two.state/state.bin" ] && [ ! -e "$T/r_two" ] && ok "state saved, no output yet" || bad "state after stop"
msg=$(train -m "$T/qwen" -d "$T/a.txt" -o "$T/r_two" --steps 6 --batch 2 --ctx 16 --lr 1e-2 --lora-rank 4 \
      --save-every 3 2>&1)
echo "$msg" | grep -q "resuming from .* at step 3/6" && ok "resumed at step 3" || bad "no resume message: $msg"
cmp -s "$T/r_once/adapter_model.safetensors" "$T/r_two/adapter_model.safetensors" \
    && ok "resumed adapter identical" || bad "resumed adapter differs"
[ ! -e "$T/r_two.state" ] && ok "state removed after success" || bad "state left behind"
msg=$(train -m "$T/qwen" -d "$T/a.txt" -o "$T/r_two" --steps 6 --batch 2 --ctx 16 --lr 1e-2 --lora-rank 8 \
      --save-every 3 --stop-after 3 2>&1; train -m "$T/qwen" -d "$T/a.txt" -o "$T/r_two" --steps 6 --batch 2 \
      --ctx 16 --lr 1e-2 --lora-rank 4 2>&1)
echo "$msg" | grep -q "different run" && ok "state of another run refused" || bad "mismatched state accepted"

echo "-- jsonl: loss on completion tokens only"
cat > "$T/pc.jsonl" <<'EOF'
{"prompt": "question: the fox?", "completion": " the dog."}

{"text": "plain text line"}
EOF
train -m "$T/qwen" -d "$T/pc.jsonl" -o "$T/pc" --steps 1 --batch 2 --ctx 32 --dump-ref "$T/d5" 2>/dev/null \
    || bad "jsonl run failed"
$PY - "$T/d5" "$HERE" <<'EOF' && ok "prompt tokens masked" || bad "prompt masking"
import sys
sys.path.insert(0, sys.argv[2])
import st
d = st.load_file(sys.argv[1] + "/model.safetensors")
tk, tg = d["s0.tokens"], d["s0.targets"]
rows = {b: [int(x) for x in tg[b]] for b in range(2)}
text_row = [b for b in rows if rows[b][0] >= 0]
pc_row = [b for b in rows if rows[b][0] < 0]
assert len(text_row) == 1 and len(pc_row) == 1, rows
r = rows[pc_row[0]]
first = next(i for i, x in enumerate(r) if x >= 0)
last = max(i for i, x in enumerate(r) if x >= 0)
assert first >= 5 and all(x >= 0 for x in r[first:last + 1]), r  # prompt masked, completion + eos counted
assert all(r[i] == int(tk[pc_row[0]][i + 1]) for i in range(first, last)), "targets are next tokens"
EOF

echo "-- bad inputs: one-line error, exit 1, no output directory"
: > "$T/empty.txt"
printf '{"text": "ok"}\n{"prompt": "x"}\n' > "$T/bad1.jsonl"
printf '{"text": "ok"}\nnot json\n' > "$T/bad2.jsonl"
expect_err() {  # pattern, args...
    local pat=$1; shift
    local o
    o=$("$ALLOY" train --ctx 16 "$@" -o "$T/never" 2>&1 >/dev/null); rc=$?
    if [ $rc -eq 1 ] && [ "$(echo "$o" | wc -l)" -eq 1 ] && echo "$o" | grep -q "$pat" && [ ! -e "$T/never" ]; then
        ok "$pat"
    else bad "expected '$pat', exit 1: got rc=$rc: $o"; fi
}
expect_err "no training tokens" -m "$T/qwen" -d "$T/empty.txt"
expect_err "bad1.jsonl:2:" -m "$T/qwen" -d "$T/bad1.jsonl"
expect_err "bad2.jsonl:2:" -m "$T/qwen" -d "$T/bad2.jsonl"
expect_err "exceeds max_position_embeddings" -m "$T/qwen" -d "$T/a.txt" --ctx 65
expect_err "'foo_proj' matches no module" -m "$T/qwen" -d "$T/a.txt" --lora-targets q_proj,foo_proj
expect_err "missing.txt" -m "$T/qwen" -d "$T/missing.txt"
expect_err "config.json" -m "$T/nomodel" -d "$T/a.txt"

[ $fail -eq 0 ] && echo "train: all checks passed"
exit $fail
