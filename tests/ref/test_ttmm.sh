#!/usr/bin/env bash
# test_ttmm.sh — TTMM expert libraries end to end: a tiny base model trained on text Debian
# ships (licenses and Python sources), a library of 2 LoRA experts built with bisecting
# k-means, then: coefficients against tests/ref/ttmm_ref.py; top-k 1 equals the base with
# that expert's adapter (`alloy logits --lora`); merged and unmerged modes agree; TTMM
# perplexity on held-out text below the base's; resume keeps finished experts; bad inputs.
# Usage: bash test_ttmm.sh build/alloy
set -u
ALLOY=$(realpath "${1:-build/alloy}")
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAIL: $*"; fail=1; }

echo "-- corpus: license paragraphs and Python source chunks"
$PY - "$T" <<'EOF2' || exit 1
import glob, os, sys
T = sys.argv[1]
os.makedirs(f"{T}/corpus"); os.makedirs(f"{T}/held")
lic = "".join(open(p, errors="ignore").read() for p in sorted(glob.glob("/usr/share/common-licenses/*"))
              if os.path.isfile(p) and "GPL" in p)
py = "".join(open(p, errors="ignore").read() for p in sorted(glob.glob("/usr/lib/python3.11/*.py"))[:40])
def chunks(s, n, size):
    return [s[i * size:(i + 1) * size] for i in range(n)]
L, P = chunks(lic, 26, 1200), chunks(py, 26, 1200)
for i in range(20):
    open(f"{T}/corpus/lic{i:02d}.txt", "w").write(L[i])
    open(f"{T}/corpus/py{i:02d}.txt", "w").write(P[i])
open(f"{T}/all.txt", "w").write("\n\n".join(L[:20] + P[:20]))
open(f"{T}/held/lic.txt", "w").write("\n\n".join(L[20:]))
open(f"{T}/held/py.txt", "w").write("\n\n".join(P[20:]))
open(f"{T}/prompt_py.txt", "w").write(P[21][:160])
open(f"{T}/prompt_lic.txt", "w").write(L[21][:160])
EOF2
$PY "$HERE/train_ref.py" make-model "$T/tok" --arch qwen2 --tied --seed 1 --vocab 300 >/dev/null || exit 1
$PY - "$T" <<'EOF2' || exit 1
import json, sys
T = sys.argv[1]
c = json.load(open(f"{T}/tok/config.json"))
c.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
         num_key_value_heads=2, max_position_embeddings=256)
c.pop("head_dim", None)
json.dump(c, open(f"{T}/cfg.json", "w"))
EOF2
"$ALLOY" init "$T/cfg.json" "$T/init" --seed 3 --dtype f32 --tokenizer "$T/tok" >/dev/null || exit 1
echo "-- base: full training on the whole corpus"
"$ALLOY" train -m "$T/init" -d "$T/all.txt" -o "$T/base" --full --steps 80 --batch 4 --ctx 128 --lr 3e-3 \
    --warmup 5 --threads 2 --log-every 1000 2>/dev/null || { bad "base training"; exit 1; }

echo "-- build: 2 experts"
build() { "$ALLOY" experts build -m "$T/base" -d "$T/corpus" --clusters 2 --lora-rank 4 --steps 40 \
    --lr 3e-3 --batch 4 --ctx 128 --doc-tokens 64 --seed 7 --threads 2 "$@"; }
build -o "$T/lib" 2>"$T/build.log" && ok "library built" || { bad "build: $(tail -1 "$T/build.log")"; exit 1; }
"$ALLOY" experts info "$T/lib" > "$T/info.txt" || bad "info"
sizes=$(grep -c "documents" "$T/info.txt")
[ "$sizes" = 2 ] && ok "2 clusters: $(grep documents "$T/info.txt" | tr -s ' ' | tr '\n' ';')" || bad "clusters"

echo "-- coefficients against the Python reference"
for p in py lic; do
    "$ALLOY" experts info "$T/lib" -p "$(cat "$T/prompt_$p.txt")" > "$T/q_$p.txt" || bad "info -p"
    $PY "$HERE/ttmm_ref.py" "$T/lib" "$T/q_$p.txt" && ok "beta/tau rule ($p)" || bad "coefficients ($p)"
    "$ALLOY" experts info "$T/lib" -p "$(cat "$T/prompt_$p.txt")" --top-k 1 > "$T/k_$p.txt" || bad "info top-k"
    $PY "$HERE/ttmm_ref.py" "$T/lib" "$T/k_$p.txt" --top-k 1 && ok "top-1 ($p)" || bad "top-1 ($p)"
done

cmp_npy() { $PY -c "
import numpy as np, sys
a, b = np.load('$1'), np.load('$2')
d = float(np.abs(a - b).max()); print('    max |diff| %.3g' % d); sys.exit(0 if a.shape == b.shape and d <= $3 else 1)"; }

echo "-- top-k 1: the library equals base + that expert's adapter"
for p in py lic; do
    "$ALLOY" experts logits "$T/lib" -p "$(cat "$T/prompt_$p.txt")" --top-k 1 -o "$T/lib1_$p.npy" 2>"$T/sel.txt" \
        || { bad "experts logits: $(cat "$T/sel.txt")"; continue; }
    k=$(sed -n 's/^experts: 1 selected ([a-z]*) \([0-9]*\):.*/\1/p' "$T/sel.txt")
    [ -n "$k" ] || { bad "no single expert selected: $(cat "$T/sel.txt")"; continue; }
    "$ALLOY" logits -m "$T/base" --lora "$T/lib/$(printf 'expert-%05d' "$k")" -p "$(cat "$T/prompt_$p.txt")" \
        -o "$T/ref1_$p.npy" 2>/dev/null || { bad "alloy logits --lora"; continue; }
    cmp_npy "$T/lib1_$p.npy" "$T/ref1_$p.npy" 1e-4 && ok "top-1 = base + expert $k ($p)" || bad "top-1 ($p)"
done

echo "-- merged and unmerged modes agree (default beta/tau rule and top-2)"
for extra in "" "--top-k 2"; do
    "$ALLOY" experts logits "$T/lib" -p "$(cat "$T/prompt_py.txt")" $extra --mode merge -o "$T/m.npy" \
        2>"$T/m.txt" || bad "merge"
    "$ALLOY" experts logits "$T/lib" -p "$(cat "$T/prompt_py.txt")" $extra --mode unmerged -o "$T/u.npy" \
        2>"$T/u.txt" || bad "unmerged"
    grep -q "(merge)" "$T/m.txt" && grep -q "(unmerged)" "$T/u.txt" || bad "modes not reported: $(cat "$T/m.txt" "$T/u.txt")"
    cmp_npy "$T/m.npy" "$T/u.npy" 1e-4 && ok "merge == unmerged ${extra:-(rule)}" || bad "merge vs unmerged $extra"
done
# auto: the cheaper of the two by flops; on this 64-wide model merging wins
# (rows*cols/(rows+cols) ~ 40 tokens); on 0.5B run-time adapters do (bench_ttmm).
"$ALLOY" experts logits "$T/lib" -p "$(cat "$T/prompt_py.txt")" -o "$T/a.npy" 2>"$T/a.txt" &&
    grep -q "(merge)" "$T/a.txt" && cmp_npy "$T/a.npy" "$T/m.npy" 1e-4 && ok "auto: $(cat "$T/a.txt")" \
    || bad "auto: $(cat "$T/a.txt")"

# decode-sized batches (<= 4 tokens) take the fused low-rank path: same logits
"$ALLOY" experts logits "$T/lib" -p "def f" --top-k 2 --mode merge -o "$T/sm.npy" 2>/dev/null &&
"$ALLOY" experts logits "$T/lib" -p "def f" --top-k 2 --mode unmerged -o "$T/su.npy" 2>/dev/null &&
    cmp_npy "$T/sm.npy" "$T/su.npy" 1e-4 && ok "merge == unmerged on a 3-token prompt (fused path)" \
    || bad "fused low-rank path"
gen() { "$ALLOY" generate -m "$T/lib" -p "$(cat "$T/prompt_py.txt")" -n 24 --temp 0 --show-ids "$@" 2>&1 >/dev/null | grep '^ids:'; }
g_m=$(gen --experts-mode merge); g_u=$(gen --experts-mode unmerged)
[ -n "$g_m" ] && [ "$g_m" = "$g_u" ] && ok "greedy generation identical in merge and unmerged modes" \
    || bad "generation differs: '$g_m' vs '$g_u'"

echo "-- ensemble: p = sum_k w_k p_k over base + expert k, against numpy"
"$ALLOY" experts logits "$T/lib" -p "$(cat "$T/prompt_py.txt")" --top-k 2 --mode ensemble -o "$T/e.npy" \
    2>"$T/e.txt" || bad "ensemble: $(cat "$T/e.txt")"
for k in 0 1; do
    "$ALLOY" logits -m "$T/base" --lora "$T/lib/$(printf 'expert-%05d' $k)" -p "$(cat "$T/prompt_py.txt")" \
        -o "$T/x$k.npy" 2>/dev/null || bad "logits expert $k"
done
$PY - "$T" "$(cat "$T/e.txt")" <<'EOF2' && ok "ensemble mixes the experts' distributions" || bad "ensemble"
import numpy as np, re, sys
T, sel = sys.argv[1], sys.argv[2]
w = {int(i): float(v) for i, v in re.findall(r" (\d+):([0-9.]+)", sel)}
assert sorted(w) == [0, 1] and "(ensemble)" in sel, sel
def logsm(z):
    z = z.astype(np.float64); m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
ref = np.log(sum(w[k] * np.exp(logsm(np.load(f"{T}/x{k}.npy"))) for k in w))
got = np.load(f"{T}/e.npy").astype(np.float64)
d = np.abs(got - ref).max(); print("    max |diff| %.3g" % d)
sys.exit(0 if got.shape == ref.shape and d <= 1e-4 else 1)
EOF2

echo "-- perplexity on held-out text: TTMM below the base; modes agree"
for h in py lic; do
    pb=$("$ALLOY" ppl -m "$T/base" -f "$T/held/$h.txt" --ctx 128 2>/dev/null | awk '/^perplexity:/ {print $2}')
    pt=$("$ALLOY" ppl -m "$T/lib" -f "$T/held/$h.txt" --ctx 128 2>/dev/null | awk '/^perplexity:/ {print $2}')
    if [ -n "$pb" ] && [ -n "$pt" ] && $PY -c "import sys; sys.exit(0 if $pt < $pb else 1)"; then
        ok "$h: TTMM $pt < base $pb"
    else bad "$h: TTMM '$pt' vs base '$pb'"; fi
    pm=$("$ALLOY" ppl -m "$T/lib" -f "$T/held/$h.txt" --ctx 128 --experts-mode merge 2>/dev/null | awk '/^perplexity:/ {print $2}')
    $PY -c "import sys; sys.exit(0 if abs($pm - $pt) <= 1e-4 * $pt else 1)" 2>/dev/null \
        && ok "$h: merge mode $pm" || bad "$h: merge mode ppl '$pm' vs '$pt'"
    pe=$("$ALLOY" ppl -m "$T/lib" -f "$T/held/$h.txt" --ctx 128 --experts-mode ensemble 2>/dev/null | awk '/^perplexity:/ {print $2}')
    [ -n "$pe" ] && ok "$h: ensemble $pe" || bad "$h: ensemble ppl"
done
out=$("$ALLOY" ppl -m "$T/lib" -f "$T/held/py.txt" --experts-mode blend 2>&1) && bad "bad mode accepted" \
    || { echo "$out" | grep -q "experts-mode 'blend'" && ok "bad mode: $out" || bad "message: $out"; }

echo "-- resume: a second build keeps every expert"
build -o "$T/lib" 2>"$T/resume.log" || bad "resume build: $(tail -1 "$T/resume.log")"
[ "$(grep -c kept "$T/resume.log")" = 2 ] && ok "2 experts kept" || bad "resume did not keep the experts"
rm -rf "$T/lib/expert-00001"
"$ALLOY" experts info "$T/lib" >/dev/null 2>&1
build -o "$T/lib" 2>"$T/resume2.log" && [ "$(grep -c kept "$T/resume2.log")" = 1 ] && [ -d "$T/lib/expert-00001" ] \
    && ok "a removed expert is retrained, the other kept" || bad "partial resume"

echo "-- ttt: test-time training on each window's nearest documents (small K and steps; 1 thread is the"
echo "   fastest for this tiny model on a shared machine)"
ttt() { "$ALLOY" ttt -m "$T/base" --corpus "$T/corpus" --neighbors 8 --steps-per-neighbor 4 --lr 3e-3 \
    --lora-rank 4 --train-ctx 128 --threads 1 "$@"; }
for h in py lic; do
    "$ALLOY" ppl -m "$T/base" -f "$T/held/$h.txt" --ctx 128 --threads 1 >"$T/pb_$h.txt" 2>/dev/null
    pb=$(awk '/^perplexity:/ {print $2}' "$T/pb_$h.txt")
    ttt -f "$T/held/$h.txt" --ctx 128 >"$T/pt_$h.txt" 2>"$T/ttt_$h.log"
    pt=$(awk '/^perplexity:/ {print $2}' "$T/pt_$h.txt")
    if [ -n "$pb" ] && [ -n "$pt" ] && $PY -c "import sys; sys.exit(0 if $pt < $pb else 1)"; then
        ok "$h: TTT $pt < base $pb; $(grep 'mean per-prompt' "$T/ttt_$h.log" | sed 's/^ttt: //')"
    else bad "$h: TTT '$pt' vs base '$pb': $(tail -1 "$T/ttt_$h.log")"; fi
    nw=$(grep -c '^ttt: prompt [0-9]*: 8 neighbours (retrieval [0-9.]* s), 32 steps (training [0-9.]* s)$' "$T/ttt_$h.log")
    [ "$(grep '^tokens:' "$T/pt_$h.txt")" = "$(grep '^tokens:' "$T/pb_$h.txt")" ] && [ "$nw" -gt 1 ] \
        && [ "$nw" = "$(grep -c '^ttt: prompt' "$T/ttt_$h.log")" ] \
        && ok "$h: $nw windows, each retrieved and trained; same scored tokens as ppl" || bad "$h: per-window lines"
done
ttt -f "$T/held/py.txt" --ctx 128 --steps-per-neighbor 0 >"$T/p0.txt" 2>/dev/null
cmp -s "$T/p0.txt" "$T/pb_py.txt" && ok "0 steps per neighbour: exactly the base's perplexity" \
    || bad "0 steps: $(head -1 "$T/p0.txt") vs base $(head -1 "$T/pb_py.txt")"
for run in 1 2; do
    ttt -p "$(cat "$T/prompt_py.txt")" -n 24 --temp 0.8 --seed 5 >"$T/tg$run.txt" 2>"$T/tg$run.log" || bad "ttt -p: $(tail -1 "$T/tg$run.log")"
done
[ -s "$T/tg1.txt" ] && grep -q '^ttt: prompt 1: 8 neighbours .*32 steps' "$T/tg1.log" && cmp -s "$T/tg1.txt" "$T/tg2.txt" \
    && ok "ttt -p generates, same text for the same seed" || bad "ttt -p output or determinism"
out=$(ttt -p "def f():" --neighbors 0 2>&1) && bad "--neighbors 0 accepted" \
    || { echo "$out" | grep -q "neighbors must be at least 1" && ok "--neighbors 0 refused" || bad "message: $out"; }
out=$(ttt -p "" 2>&1) && bad "empty prompt accepted" \
    || { echo "$out" | grep -q "prompt is empty" && ok "empty prompt refused" || bad "message: $out"; }
ttt -p "def f():" -n 2 --neighbors 100 --steps-per-neighbor 0 2>&1 >/dev/null | grep -q "exceeds the corpus's 40 documents" \
    && ok "--neighbors above the corpus size: all documents, with a note" || bad "no note for --neighbors 100"

echo "-- bad inputs"
mkdir -p "$T/small"; cp "$T/corpus/lic00.txt" "$T/corpus/py00.txt" "$T/small/"
out=$(build -d "$T/small" -o "$T/lib_small" --clusters 5 2>&1) && bad "3 clusters from 2 documents accepted" \
    || { echo "$out" | grep -q "fewer than the" && ok "too few documents: $(echo "$out" | tail -1)" || bad "message: $out"; }
out=$(build -o "$T/lib" --seed 8 2>&1) && bad "other settings into an existing library accepted" \
    || { echo "$out" | grep -q "another base, corpus or settings" && ok "settings changed: refused" || bad "message: $out"; }
cp -r "$T/lib" "$T/lib_moved"
"$ALLOY" init "$T/cfg.json" "$T/other" --seed 9 --dtype f32 --tokenizer "$T/tok" >/dev/null
$PY - "$T/lib_moved/alloy_experts.json" "$T/other" <<'EOF2'
import json, sys
m = json.load(open(sys.argv[1])); m["base"] = sys.argv[2]; json.dump(m, open(sys.argv[1], "w"))
EOF2
out=$("$ALLOY" ppl -m "$T/lib_moved" -f "$T/held/py.txt" 2>&1) && bad "changed base accepted" \
    || { echo "$out" | grep -q "changed since the library was built" && ok "changed base: $(echo "$out" | tail -1 | cut -c1-90)..." || bad "message: $out"; }
printf '{"text": "a"}\nnot json\n' > "$T/bad.jsonl"
out=$(build -d "$T/bad.jsonl" -o "$T/lib_bad" 2>&1) && bad "bad jsonl accepted" \
    || { echo "$out" | grep -q "bad.jsonl:2" && ok "bad jsonl line named" || bad "message: $out"; }

[ $fail = 0 ] && echo "test_ttmm: all passed" || echo "test_ttmm: FAILED"
exit $fail
