#!/usr/bin/env bash
# Two rdrop binaries side by side on CPU, interleaved (A B A B ...) so drifting machine load hits both:
# decoding (`rdrop translate` of Multi30k test_2016, greedy and beam 5, whole-process wall time) and
# training (`rdrop train` of the Multi30k baseline recipe for a few updates, median target tokens/s
# of the logging windows after the first). For checking that a change leaves speed alone; the peers'
# comparisons are bench_translate.sh and bench_train.sh.
#
#   scripts/bench_ab.sh OLD_BIN NEW_BIN MODEL_DIR    # MODEL_DIR: a trained checkpoint (e.g. a run's best/)
#
#   REPEATS   runs of each binary per measurement (default 3)    UPDATES  training updates (default 60)
#   LINES     test sentences decoded (default all 1000)          WORK     scratch dir (default /tmp/bench-ab)
# Needs ../shared/data/multi30k. Prints one table; stop other work first (the 1-minute load average is
# printed beside it).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -eq 3 ] || { sed -n '2,13p' "$repo/scripts/bench_ab.sh"; exit 2; }
A=$(realpath "$1") B=$(realpath "$2") MODEL=$(realpath "$3")
REPEATS=${REPEATS:-3} UPDATES=${UPDATES:-60} LINES=${LINES:-0} WORK=${WORK:-/tmp/bench-ab}
DATA=$repo/../shared/data/multi30k/raw
[ -d "$DATA" ] || { echo "no Multi30k data at $DATA" >&2; exit 1; }
mkdir -p "$WORK"
if [ "$LINES" -gt 0 ]; then head -n "$LINES" "$DATA/test_2016_flickr.de"; else cat "$DATA/test_2016_flickr.de"; fi >"$WORK/src.de"
export RAYON_NUM_THREADS=2 RDROP_PROGRESS=plain
results=$WORK/results.tsv
: >"$results"

for r in $(seq "$REPEATS"); do
  for side in A B; do
    bin=$A; [ $side = B ] && bin=$B
    for beam in 1 5; do
      s=$(date +%s.%N)
      "$bin" translate --model "$MODEL" --beam $beam --quiet --input "$WORK/src.de" --output "$WORK/hyp.$side.$beam" 2>/dev/null
      e=$(date +%s.%N)
      printf 'translate beam %s\t%s\t%s\n' $beam $side "$(python3 -c "print($e - $s)")" >>"$results"
    done
    run=$WORK/run-$side
    rm -rf "$run"
    (cd "$repo" && "$bin" train recipes/multi30k-de-en-baseline.toml --quiet \
      --set "output_dir=\"$run\"" --set "training.max_updates=$UPDATES" --set training.log_every=10 \
      --set validation.every_updates=0 --set validation.patience=0 --set checkpoint.every_updates=0 \
      --set validation.max_sentences=20 --set validation.consistency=false) >/dev/null 2>&1
    python3 - "$run/metrics.jsonl" "$side" >>"$results" <<'EOF'
import json, statistics, sys
recs = [r for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "train"]
print(f"train tok/s\t{sys.argv[2]}\t{statistics.median(r['tokens_per_s'] for r in recs[1:])}")
EOF
  done
done
for beam in 1 5; do
  cmp -s "$WORK/hyp.A.$beam" "$WORK/hyp.B.$beam" && same=identical || same=DIFFERENT
  echo "beam $beam outputs: $same" >&2
done
python3 - "$results" "$A" "$B" <<'EOF'
import collections, os, statistics, sys
m = collections.defaultdict(list)
for line in open(sys.argv[1]):
    what, side, v = line.rstrip("\n").split("\t")
    m[(what, side)].append(float(v))
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}\nload average: {os.getloadavg()[0]:.2f}")
print(f"{'':20} {'A median':>10} {'B median':>10} {'B/A':>6}   runs A | B")
for what in dict.fromkeys(w for w, _ in m):
    a, b = statistics.median(m[(what, 'A')]), statistics.median(m[(what, 'B')])
    fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)
    print(f"{what + (' (s)' if 'translate' in what else ''):20} {a:10.2f} {b:10.2f} {b / a:6.3f}   {fmt(m[(what, 'A')])} | {fmt(m[(what, 'B')])}")
EOF
