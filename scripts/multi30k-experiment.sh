#!/usr/bin/env bash
# Baseline (label-smoothed CE) vs R-Drop on Multi30k de→en with the same update budget:
# trains both recipes, decodes test_2016_flickr with beam search from each best checkpoint
# (by validation BLEU), scores with `rdrop bleu` (cross-checked with sacreBLEU from the Python env),
# runs a paired bootstrap test, and writes a markdown table + training curves.
#
#   scripts/multi30k-experiment.sh [MAX_UPDATES]      (default: the recipes' budget, 6000 updates)
#
# Environment: OUT (default runs/multi30k-experiment), RDROP (binary; default target/release/rdrop,
# built if missing), BEAM (default 5), EXTRA_SET (more `--set k=v` flags for both runs).
# Re-running continues interrupted trainings (--resume). Needs ../shared/data/multi30k.
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATES=${1:-}
OUT=${OUT:-runs/multi30k-experiment}
BEAM=${BEAM:-5}
DATA=../shared/data/multi30k/raw
[ -d "$DATA" ] || { echo "no Multi30k data at $DATA" >&2; exit 1; }
if [ -z "${RDROP:-}" ]; then
  RDROP=target/release/rdrop
  [ -x "$RDROP" ] || cargo build --release -p rdrop >&2
fi
mkdir -p "$OUT"
SETS=()
[ -n "$UPDATES" ] && SETS+=(--set "training.max_updates=$UPDATES")
# Validate and checkpoint at least 4 times in a short run.
if [ -n "$UPDATES" ]; then
  EVERY=$(( UPDATES / 4 > 0 ? UPDATES / 4 : 1 ))
  SETS+=(--set "validation.every_updates=$EVERY" --set "checkpoint.every_updates=$EVERY")
  WARM=$(( UPDATES / 6 > 0 ? UPDATES / 6 : 1 ))
  [ "$WARM" -lt 1000 ] && SETS+=(--set "schedule.warmup_updates=$WARM")
fi
# shellcheck disable=SC2206
SETS+=(${EXTRA_SET:-})

for name in baseline rdrop; do
  run="$OUT/$name"
  resume=()
  [ -d "$run/checkpoints" ] && [ -n "$(ls "$run/checkpoints" 2>/dev/null)" ] && resume=(--resume)
  if [ ! -f "$run/DONE" ]; then
    echo "== training $name ($run)" >&2
    /usr/bin/time -v "$RDROP" train "recipes/multi30k-de-en-$name.toml" --set "output_dir=\"$run\"" \
      "${SETS[@]}" "${resume[@]}" 2> >(tee "$run.train.log" >&2)
    touch "$run/DONE"
  fi
  echo "== decoding test_2016_flickr with $name (beam $BEAM)" >&2
  "$RDROP" translate --model "$run/best" --beam "$BEAM" --quiet \
    < "$DATA/test_2016_flickr.de" > "$OUT/$name.test_2016_flickr.en"
done

REF="$DATA/test_2016_flickr.en"
"$RDROP" bleu "$REF" -i "$OUT/baseline.test_2016_flickr.en" "$OUT/rdrop.test_2016_flickr.en" \
  --paired-bs --paired-bs-n 1000 > "$OUT/paired-bootstrap.txt"
cat "$OUT/paired-bootstrap.txt" >&2
for name in baseline rdrop; do
  "$RDROP" bleu "$REF" -i "$OUT/$name.test_2016_flickr.en" > "$OUT/$name.bleu.txt"
done
PY=$(bash scripts/py-env.sh)/bin/python
"$PY" scripts/multi30k_report.py --out "$OUT" --ref "$REF"
