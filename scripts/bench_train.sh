#!/usr/bin/env bash
# Training step time and peak RSS, rdrop vs the PyTorch/transformers peer (../shared/peers/bench_train.py),
# on the same tiny Marian checkpoint (../shared/peers/make_tiny_marian.py: d256, 3+3 layers, vocab 8000)
# and the same batch shape (32 x 32, 2 threads), for label-smoothed CE and R-Drop (α 5).
# Run the two side by side in one quiet window; writes JSON lines to $OUT/bench_train.jsonl.
#   scripts/bench_train.sh            (OUT default runs/bench-train; STEPS default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench-train}
STEPS=${STEPS:-20}
PEERS=../shared/peers
mkdir -p "$OUT"
PY=$(bash scripts/py-env.sh)/bin/python
MODEL=${MODEL:-$OUT/tiny-marian}
[ -f "$MODEL/config.json" ] || "$PY" "$PEERS/make_tiny_marian.py" --out "$MODEL" >&2
# BENCH_BIN: an already built bench_step (e.g. a dev build with CARGO_PROFILE_DEV_OPT_LEVEL=3).
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release -p rdrop-train --example bench_step >&2
  BENCH_BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_step
fi
BIN=$BENCH_BIN
JSON="$OUT/bench_train.jsonl"
: > "$JSON"
export RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2
for mode in ce rdrop; do
  "$PY" "$PEERS/bench_train.py" --model-dir "$MODEL" --mode "$mode" --steps "$STEPS" --threads 2 \
    --json-out "$JSON" >/dev/null
  "$BIN" --model-dir "$MODEL" --mode "$mode" --steps "$STEPS" >> "$JSON"
done
"$PY" - "$JSON" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| mode | impl | median step (s) | target tok/s | peak RSS (MiB) |")
print("|---|---|---|---|---|")
by = {}
for r in rows:
    by[(r["mode"], r["impl"])] = r
    print(f"| {r['mode']} | {r['impl']} | {r['median_step_s']:.3f} | {r['tgt_tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} |")
for m in ["ce", "rdrop"]:
    if (m, "torch") in by and (m, "rdrop") in by:
        t, o = by[(m, "torch")], by[(m, "rdrop")]
        print(f"\n{m}: rdrop step time / PyTorch = {o['median_step_s'] / t['median_step_s']:.2f}x, "
              f"peak RSS ratio {o['peak_rss_mib'] / t['peak_rss_mib']:.2f}x")
PYEOF
