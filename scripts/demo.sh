#!/usr/bin/env bash
# demo.sh — `make demo`: generate three tiny Qwen2-shaped checkpoints (a base
# and two "fine-tunes", deterministic), merge them with TIES and with SLERP
# (per-layer gradient), and show what happened. Runs in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
D="$BUILD/demo"
M="$D/models"
PY=/usr/bin/python3
mkdir -p "$D"

echo "== 1. three tiny bf16 checkpoints (hidden 64, 4 layers, vocab 512) in $M"
$PY scripts/gen_model.py "$M" --variants 2 --hidden 64 --inter 176 --layers 4 --heads 4 --kv 2 --vocab 512 >/dev/null
ls "$M"

cat > "$D/ties.yml" <<YAML
merge_method: ties
base_model: $M/base
models:
  - model: $M/ft1
    parameters: {weight: 0.6, density: 0.5}
  - model: $M/ft2
    parameters: {weight: 0.4, density: 0.5}
parameters:
  normalize: true
dtype: bfloat16
YAML

cat > "$D/slerp.yml" <<YAML
merge_method: slerp
base_model: $M/base
slices:
  - sources:
      - model: $M/base
        layer_range: [0, 4]
      - model: $M/ft1
        layer_range: [0, 4]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
YAML

echo
echo "== 2. the TIES plan (alloy merge --dry-run)"
"$BUILD/alloy" merge "$D/ties.yml" --dry-run
echo
echo "== 3. merging"
"$BUILD/alloy" merge "$D/ties.yml" "$D/merged-ties"
"$BUILD/alloy" merge "$D/slerp.yml" "$D/merged-slerp"
echo
echo "== 4. results: distance of each merged tensor stack to its parents"
$PY - "$M" "$D" <<'PY'
import json, os, struct, sys
import numpy as np
M, D = sys.argv[1], sys.argv[2]
def load(d):
    raw = open(os.path.join(d, "model.safetensors"), "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]; h = json.loads(raw[8:8+n]); out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        a, b = v["data_offsets"]
        u = np.frombuffer(raw[8+n+a:8+n+b], np.uint16).astype(np.uint32) << 16
        out[k] = u.view(np.float32)
    return out
base, ft1, ft2 = load(M + "/base"), load(M + "/ft1"), load(M + "/ft2")
for name in ("merged-ties", "merged-slerp"):
    m = load(os.path.join(D, name))
    dist = lambda x: np.sqrt(sum(((m[k] - x[k]) ** 2).sum() for k in m))
    files = sorted(os.listdir(os.path.join(D, name)))
    print("%-13s %d tensors | L2 to base %.4f  ft1 %.4f  ft2 %.4f | files: %s" % (
        name, len(m), dist(base), dist(ft1), dist(ft2), ", ".join(files)))
PY
echo
echo "Done. Merged checkpoints are in $D/merged-ties and $D/merged-slerp (HF layout, bf16)."
