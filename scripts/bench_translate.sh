#!/usr/bin/env bash
# Decoding speed of `rdrop translate` beside transformers `generate` and CTranslate2 (float32) on CPU:
# the same model (../shared/peers/make_tiny_marian.py, tiny preset unless PRESET=opus), the same 256 random
# sources of 20 tokens (the peers' generator and seed), batches of 32, exactly 32 decoder steps (</s>
# banned before step 32 and forced there), greedy and beam 4.
#
#   bash scripts/bench_translate.sh                # writes $BENCH_WORK/translate.jsonl and prints a table
#   PRESET=opus REPEATS=1 bash scripts/bench_translate.sh
#   RDROP_BIN=target/release/rdrop bash scripts/bench_translate.sh   # skip the cargo build
#
# rdrop times are whole-process wall times (model loading and start-up included, median of REPEATS);
# the peers time only their translate calls after a warm-up batch, so the comparison favours the peers.
# THREADS (default 2 = this machine's cores) is every engine's thread count. The peers' script splits
# each batch's operations across them (intra-op); rdrop decodes THREADS batches at once, one thread
# each (`--threads`, as marian-decoder's --cpu-threads). CTranslate2 can work that way too
# (inter_threads), so it is also timed like that here, on all sources in one translate_batch call
# split into batches of 32 ("ctranslate2-inter" rows). Other load on the machine skews all numbers:
# the 1-minute load average is printed with each rdrop run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/peers}
PRESET=${PRESET:-tiny}
WORK=${BENCH_WORK:-$HOME/.cache/rdrop-bench}
REPEATS=${REPEATS:-3}
THREADS=${THREADS:-2}
N=256 SRC_LEN=20 BATCH=32 MAX_NEW=32
mkdir -p "$WORK"
PY=$(bash "$ROOT/scripts/py-env.sh")/bin/python
if ! "$PY" -c "import ctranslate2" 2>/dev/null; then
    "$PY" -m pip install --quiet ctranslate2==4.8.5
fi

MODEL=$WORK/$PRESET-marian
if [ ! -f "$MODEL/config.json" ]; then
    "$PY" "$PEERS/make_tiny_marian.py" --preset "$PRESET" --out "$MODEL" >/dev/null
fi
OUT=$WORK/translate.jsonl
: > "$OUT"

# Peers: transformers (sdpa) and CTranslate2 float32.
"$PY" "$PEERS/bench_translate.py" --engines hf,ct2 --model-dir "$MODEL" --n $N --src-len $SRC_LEN \
    --batch $BATCH --max-new $MAX_NEW --threads "$THREADS" --repeats "$REPEATS" --json-out "$OUT" >/dev/null

# CTranslate2 with THREADS workers of one thread each, over the same sources.
"$PY" - "$PEERS" "$MODEL" $N $SRC_LEN $BATCH $MAX_NEW "$THREADS" "$REPEATS" >> "$OUT" <<'EOF'
import json, os, statistics, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, sys.argv[1])
import ctranslate2
from bench_translate import make_sources
model, n, src_len, batch, max_new, threads, repeats = sys.argv[2], *map(int, sys.argv[3:])
vocab = json.load(open(model + "/vocab.json"))
id2tok = {i: t for t, i in vocab.items()}
srcs = [[id2tok[i] for i in s] for s in make_sources(n, src_len, len(vocab), 0)]
tr = ctranslate2.Translator(model + "-ct2", device="cpu", compute_type="float32",
                            intra_threads=1, inter_threads=threads)
for k in (1, 4):
    kw = dict(beam_size=k, max_decoding_length=max_new, min_decoding_length=max_new,
              max_batch_size=batch, batch_type="examples")
    tr.translate_batch(srcs[:batch], **kw)  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = tr.translate_batch(srcs, **kw)
        runs.append(time.perf_counter() - t0)
    assert all(len(r.hypotheses[0]) == max_new for r in out)
    med = statistics.median(runs)
    print(json.dumps(dict(bench="translate", impl="ctranslate2-inter", engine_version=ctranslate2.__version__,
                          beams=k, n=n, max_new=max_new, threads=threads, intra_threads=1, inter_threads=threads,
                          wall_s_runs=[round(r, 3) for r in runs], median_wall_s=round(med, 3),
                          sent_per_s=round(n / med, 2))))
EOF

# The same sources, as token-id lines.
"$PY" - "$PEERS" "$MODEL" $N $SRC_LEN > "$WORK/sources.ids" <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[1])
from bench_translate import make_sources
V = json.load(open(sys.argv[2] + "/config.json"))["vocab_size"]
for s in make_sources(int(sys.argv[3]), int(sys.argv[4]), V, 0):
    print(" ".join(map(str, s)))
EOF

# RDROP_BIN=path reuses a built binary (optimised builds only: timings of a debug build mean nothing).
if [ -n "${RDROP_BIN:-}" ]; then
    RDROP=$RDROP_BIN
else
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin rdrop
    RDROP=$CARGO_TARGET_DIR/release/rdrop
fi

for BEAM in 1 4; do
    runs=()
    for _ in $(seq "$REPEATS"); do
        load=$(cut -d' ' -f1 /proc/loadavg)
        t0=$(date +%s.%N)
        "$RDROP" translate --model "$MODEL" --token-ids --beam "$BEAM" --max-new-tokens $MAX_NEW \
            --min-new-tokens $MAX_NEW --batch-size $BATCH --batch-tokens 1000000 --threads "$THREADS" --quiet \
            < "$WORK/sources.ids" > "$WORK/rdrop-beam$BEAM.ids"
        t1=$(date +%s.%N)
        runs+=("$(echo "$t1 - $t0" | bc)")
        echo "rdrop beam $BEAM: ${runs[-1]} s (load average $load)" >&2
    done
    "$PY" - "$BEAM" "$N" "$MAX_NEW" "$THREADS" "$WORK/rdrop-beam$BEAM.ids" "${runs[@]}" >> "$OUT" <<'EOF'
import json, statistics, sys
beam, n, max_new, threads, ids = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
runs = [float(x) for x in sys.argv[6:]]
lines = open(ids).read().splitlines()
assert len(lines) == n and all(len(l.split()) == max_new for l in lines), "rdrop output is not n x max_new ids"
med = statistics.median(runs)
print(json.dumps(dict(bench="translate", impl="rdrop", beams=beam, n=n, max_new=max_new, threads=threads,
                      wall_s_runs=[round(r, 3) for r in runs], median_wall_s=round(med, 3),
                      sent_per_s=round(n / med, 2), timing="whole process")))
EOF
done

"$PY" - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'engine':<18}{'beam':>5}{'median s':>10}{'sent/s':>10}")
for r in rows:
    print(f"{r['impl']:<18}{r['beams']:>5}{r['median_wall_s']:>10.3f}{r['sent_per_s']:>10.1f}")
EOF
