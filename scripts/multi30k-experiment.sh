#!/usr/bin/env bash
# Multi30k de→en, trained to convergence: the baseline (label-smoothed CE), an R-Drop α sweep, R-Drop
# at the α that validation picks, and a compute-matched control (the baseline given R-Drop's
# forward/backward sentence passes: twice its updates). Each system's best checkpoint (by validation
# BLEU) and the average of its last checkpoints decode test_2016_flickr and test_2017_flickr with
# beam search; `rdrop bleu` scores them (BLEU, lowercased BLEU, chrF), runs paired bootstrap and
# approximate randomisation tests, and scripts/multi30k_report.py writes report.md with PNG curves.
#
#   scripts/multi30k-experiment.sh [--device cuda] [--plan "STEP ..."] [--fresh-binary]
#
# Resumable: every step leaves a DONE marker or checkpoints, and a rerun continues where it stopped
# (a killed training resumes from its latest checkpoint). R-Drop continues the sweep run of its α and
# the control continues the baseline, rather than training the updates they share twice. State lives
# outside the work tree so a new checkout continues the same experiment:
#   STATE     (default $HOME/.cache/rdrop/multi30k-experiment[-cuda]) runs, outputs, scores, report
#   RDROP     binary to run (default target/release/rdrop, built if missing). It is copied into
#             $STATE/bin once, with the commit it was built from, and that copy runs every step, so
#             later builds cannot change a running experiment; --fresh-binary replaces the copy.
#   ALPHAS    α values of the sweep (default "0.5 1 3 5")
#   SWEEP_UPDATES  updates per sweep run (default 1500, ~7 epochs: short runs, picked on validation BLEU)
#   SEEDS     seeds of the baseline, the chosen R-Drop and the control (default "1"; "1 2" for
#             mean ± std; seed N trains baseline-sN, rdrop-sN and control-sN under the same budget)
#   BEAM      test decoding beam (default 5); AVG_LAST (checkpoints averaged, default 5)
#   EXTRA_SET more `--set k=v` flags for every training (e.g. a shorter budget for a smoke test);
#             the steps' own settings come after them (the sweep's budget: set SWEEP_UPDATES)
#   NICE      niceness of the trainings (default 19: the experiment yields to interactive work)
#   JOBS      trainings run at once (default: 2 on a CPU with 2 or more cores, 1 with --device cuda);
#             the baseline and the sweep runs are independent, and so are the seeds. On 2 cores two
#             1-thread trainings train more tokens/s than one 2-thread training (baseline recipe:
#             1,500 + 1,400 vs 1,750 tok/s on an AMD EPYC; 1,300 beside an R-Drop run vs 1,817 alone
#             on an Intel Xeon), and the thread count does not change the numbers a training produces.
#   THREADS   CPU threads per training (default: the cores divided by JOBS)
#   TEST_LINES decode and score only the first N lines of each test set (smoke tests; default all)
#   ALPHA     skip the sweep and train R-Drop at this α (e.g. one an earlier sweep chose)
#   BUDGET    a fixed budget instead of convergence: the baseline and R-Drop train BUDGET updates,
#             the control 2×BUDGET, none stops early; the control continues the baseline as soon
#             as it is done, beside R-Drop, so both cores stay busy. For an experiment that must end
#             within one sitting (a machine that does not keep $STATE).
#   DATA      Multi30k's raw/ folder, for training and testing (default ../shared/data/multi30k/raw);
#             the official tokenised test references are read from DATA/../tok
#   REPORT_PYTHON  a Python with sacrebleu, sacremoses and matplotlib for the report (default: a small
#             venv made under $STATE/py)
# --plan picks and orders the steps (default: "baseline sweep rdrop control seeds report").
# With --device cuda, every training runs on the GPU (use a CUDA build as RDROP), and validation and
# test decoding in large batches (500 sentences for validation, VALID_BATCH; 512 for the test sets).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

DEVICE=cpu
PLAN="baseline sweep rdrop control seeds report"
FRESH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --plan) PLAN=$2; shift 2 ;;
    --fresh-binary) FRESH=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$repo/scripts/multi30k-experiment.sh" | sed '$d'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
suffix=""; [ "$DEVICE" != cpu ] && suffix="-cuda"
STATE=${STATE:-$HOME/.cache/rdrop/multi30k-experiment$suffix}
ALPHAS=${ALPHAS:-0.5 1 3 5}
SWEEP_UPDATES=${SWEEP_UPDATES:-1500}
SEEDS=${SEEDS:-1}
ALPHA=${ALPHA:-}
BUDGET=${BUDGET:-}
BEAM=${BEAM:-5}
AVG_LAST=${AVG_LAST:-5}
NICE=${NICE:-19}
cores=$(nproc 2>/dev/null || echo 1)
if [ "$DEVICE" = cpu ] && [ "$cores" -ge 2 ]; then JOBS=${JOBS:-2}; else JOBS=${JOBS:-1}; fi
THREADS=${THREADS:-$(( cores / JOBS > 0 ? cores / JOBS : 1 ))}
DATA=${DATA:-$repo/../shared/data/multi30k/raw}
[ -d "$DATA" ] || { echo "no Multi30k data at $DATA" >&2; exit 1; }
# The recipes read ../shared; another DATA reaches the trainings as settings (none by default, so
# runs started without DATA resume with the recipe they started with).
data_set=()
if [ "$DATA" != "$repo/../shared/data/multi30k/raw" ]; then
  data_set=(--set "data.train={ source = \"$DATA/train.de\", target = \"$DATA/train.en\" }"
    --set "data.valid={ source = \"$DATA/val.de\", target = \"$DATA/val.en\" }")
fi
# On a GPU a decoding step costs about the same for 64 rows as for 2,500: validate and translate in
# large batches there (the results do not depend on the batching).
dev_set=() dev_tr=()
if [ "$DEVICE" != cpu ]; then
  dev_set=(--set "validation.batch_size=${VALID_BATCH:-500}")
  dev_tr=(--batch-size 512 --batch-tokens 131072)
fi
mkdir -p "$STATE"/{bin,runs,out,scores,logs,test}
# The test sets as scored (all lines unless TEST_LINES), with the official tokenised references.
for t in test_2016_flickr test_2017_flickr; do
  for f in "$DATA/$t.de" "$DATA/$t.en" "$DATA/../tok/$t.lc.norm.tok.en"; do
    if [ -n "${TEST_LINES:-}" ]; then head -n "$TEST_LINES" "$f"; else cat "$f"; fi >"$STATE/test/$(basename "$f")"
  done
done
TEST=$STATE/test
log() { echo "[$(date '+%F %T')] $*" | tee -a "$STATE/logs/experiment.log" >&2; }

# --- the frozen binary ------------------------------------------------------------------------
BIN=$STATE/bin/rdrop
if [ ! -x "$BIN" ] || [ "$FRESH" = 1 ]; then
  src=${RDROP:-$repo/target/release/rdrop}
  if [ -z "${RDROP:-}" ]; then cargo build --release --locked -p rdrop >&2; fi
  cp "$src" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
  # A given binary names the commit it was built from (a copied checkout may have no git).
  if [ -n "${RDROP:-}" ]; then
    built=$("$src" --version 2>/dev/null | sed -n 's/.*(commit \([0-9a-f]*\)\(-dirty\)\{0,1\}[;)].*/\1\2/p')
    [ -n "$built" ] && commit=${built/-dirty/ (with uncommitted changes)}
  fi
  if [ -f "$STATE/bin/COMMIT" ] && [ "$FRESH" != 1 ]; then
    # A state that came without its binary (gpu-check.sh's stage 5 returns it so): its runs were
    # trained by the commit it names, and this binary only scores and reports them.
    log "binary: $src at $commit -> $BIN, to score runs trained at $(cat "$STATE/bin/COMMIT")"
  else
    echo "$commit" >"$STATE/bin/COMMIT"
    log "binary: $src at $commit -> $BIN"
  fi
fi
COMMIT=$(cat "$STATE/bin/COMMIT")

# --- steps ------------------------------------------------------------------------------------
# fit NAME RECIPE [--set ...]: trains into $STATE/runs/NAME, resuming a partial run. A training
# that fails or is stopped ends the whole experiment (callers run it inside `&&` lists, where
# set -e would not), so no later step starts from an unfinished run.
fit() {
  local name=$1 recipe=$2; shift 2
  local run=$STATE/runs/$name
  local resume=()
  if [ -n "$(ls "$run/checkpoints" 2>/dev/null)" ]; then resume=(--resume); fi
  log "training $name ${resume[*]} ($*)"
  # shellcheck disable=SC2086
  nice -n "$NICE" "$BIN" train "$recipe" --set "output_dir=\"$run\"" --set "device=\"$DEVICE\"" \
    --set "training.threads=$THREADS" "${data_set[@]}" "${dev_set[@]}" ${EXTRA_SET:-} "$@" "${resume[@]}" >>"$STATE/logs/$name.log" 2>&1 \
    || { log "training $name stopped: see $STATE/logs/$name.log; rerun to resume"; exit 1; }
}

# train NAME RECIPE [--set ...]: `fit` to the end of the run's budget or patience, then DONE.
train() {
  [ -f "$STATE/runs/$1/DONE" ] && return 0
  fit "$@"
  touch "$STATE/runs/$1/DONE"
  log "trained $1: $(grep -h 'trained' "$STATE/logs/$1.log" | tail -n 1)"
}

# spawn CMD...: runs CMD, a step of the experiment, in the background once fewer than JOBS run
# (inline when JOBS is 1). A step that fails leaves $STATE/logs/FAILED, and `join` stops there.
spawn() {
  if [ "$JOBS" -le 1 ]; then "$@"; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  ( "$@" ) || touch "$STATE/logs/FAILED" &
}

# join: waits for every spawned step; the experiment stops if one failed (rerun to resume).
join() {
  wait
  if [ -f "$STATE/logs/FAILED" ]; then
    rm -f "$STATE/logs/FAILED"
    log "a step failed (see $STATE/logs): stopping; rerun to resume"
    exit 1
  fi
}

# branch SRC DST: DST starts as a copy of the finished run SRC, which trained the same recipe with the
# same seed up to its last checkpoint (the inverse-sqrt schedule does not depend on max_updates, and
# a resumed run continues exactly where it stopped), so those updates are not trained twice; `train`
# then resumes DST from there under its own budget and patience.
branch() {
  local src=$STATE/runs/$1 dst=$STATE/runs/$2
  [ -f "$src/DONE" ] && [ ! -e "$dst" ] || return 0
  rm -rf "$dst.tmp" && cp -a "$src" "$dst.tmp" && rm -f "$dst.tmp/DONE" && mv "$dst.tmp" "$dst"
  log "$2 continues $1 from update $(updates_of "$2")"
}

# best_valid NAME: the best validation BLEU of a run (from its metrics).
best_valid() {
  python3 - "$STATE/runs/$1/metrics.jsonl" <<'EOF'
import json, sys
best = max((r.get("bleu") or -1 for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "valid"), default=-1)
print(best)
EOF
}

# updates_of NAME: updates the run trained (0 before its first checkpoint).
updates_of() {
  local last
  last=$(ls -d "$STATE/runs/$1"/checkpoints/update_* 2>/dev/null | tail -n 1)
  if [ -z "$last" ]; then echo 0; return; fi
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["update"])' "$last/trainer_state.json"
}

# evaluate NAME: decode both test sets from best/ and from the average of the last checkpoints.
evaluate() {
  local name=$1 run=$STATE/runs/$1
  [ -f "$run/DONE" ] || return 0
  local avg=$STATE/avg/$name-avg$AVG_LAST
  if [ ! -f "$avg/model.safetensors" ]; then
    mkdir -p "$STATE/avg"
    "$BIN" average --checkpoints "$run" --last "$AVG_LAST" --out "$avg" >>"$STATE/logs/$name.log" 2>&1
  fi
  for ck in best "avg$AVG_LAST"; do
    local model=$run/best
    [ "$ck" = best ] || model=$avg
    for t in test_2016_flickr test_2017_flickr; do
      local hyp=$STATE/out/$name.$ck.$t.en
      if [ ! -f "$hyp" ]; then
        nice -n "$NICE" "$BIN" translate --model "$model" --beam "$BEAM" --device "$DEVICE" "${dev_tr[@]}" --quiet \
          --input "$TEST/$t.de" --output "$hyp.tmp" && mv "$hyp.tmp" "$hyp"
      fi
      for kind in bleu lc chrf; do
        local sc=$STATE/scores/$name.$ck.$t.$kind.json
        [ -f "$sc" ] && continue
        case $kind in
          bleu) "$BIN" bleu "$TEST/$t.en" -i "$hyp" -w 4 -f json >"$sc" ;;
          lc) "$BIN" bleu "$TEST/$t.en" -i "$hyp" -lc -w 4 -f json >"$sc" ;;
          chrf) "$BIN" bleu "$TEST/$t.en" -i "$hyp" -m chrf -w 4 -f json >"$sc" ;;
        esac
      done
    done
  done
}

# significance BASE OTHER: paired tests of OTHER against BASE on both test sets (best checkpoints).
significance() {
  local a=$1 b=$2
  for t in test_2016_flickr test_2017_flickr; do
    local ha=$STATE/out/$a.best.$t.en hb=$STATE/out/$b.best.$t.en
    [ -f "$ha" ] && [ -f "$hb" ] || continue
    local f=$STATE/scores/paired.$a.$b.$t.txt
    [ -f "$f" ] && continue
    # From the outputs' folder, so the tables name systems by file name, not by path.
    (cd "$STATE/out" && "$BIN" bleu "$TEST/$t.en" -i "${ha##*/}" "${hb##*/}" --paired-bs --paired-bs-n 1000 \
      && "$BIN" bleu "$TEST/$t.en" -i "${ha##*/}" "${hb##*/}" --paired-ar) >"$f.tmp" && mv "$f.tmp" "$f"
  done
}

# chosen_alpha: the sweep's α with the best validation BLEU (ties: the smaller α).
chosen_alpha() {
  local best=-1 pick=""
  for a in $ALPHAS; do
    [ -f "$STATE/runs/sweep-a$a/DONE" ] || continue
    local v; v=$(best_valid "sweep-a$a")
    if python3 -c "import sys; sys.exit(0 if float('$v') > float('$best') else 1)"; then best=$v; pick=$a; fi
  done
  echo "$pick"
}

BASE=recipes/multi30k-de-en-baseline.toml
RDROP_RECIPE=recipes/multi30k-de-en-rdrop.toml
# With a BUDGET, every training stops at its budget rather than on validation patience.
budget=()
[ -n "$BUDGET" ] && budget=(--set "training.max_updates=$BUDGET" --set "validation.patience=0")
baseline_step() { train baseline "$BASE" "${budget[@]}" && evaluate baseline; }
rdrop_step() {
  train rdrop "$RDROP_RECIPE" --set "criterion.alpha=$1" "${budget[@]}" && evaluate rdrop
}
# control_step [SEED]: the control is the baseline given twice R-Drop's updates (of the same seed:
# control-sN continues baseline-sN beside rdrop-sN). It runs beside R-Drop, trailing it: it may
# always train to twice R-Drop's latest checkpoint, since R-Drop's final count can only be larger,
# and it ends at twice the final count once R-Drop is done.
control_step() {
  local sfx="" seed=()
  if [ -n "${1:-}" ]; then sfx=-s$1; seed=(--set "seed=$1"); fi
  local base=baseline$sfx rdrop=rdrop$sfx control=control$sfx
  local ctl=$STATE/runs/$control
  while [ ! -f "$ctl/DONE" ]; do
    local n rdone=0
    if [ -n "$BUDGET" ]; then
      # A fixed budget fixes the control's length from the start: it need not trail R-Drop.
      n=$(( 2 * BUDGET )); rdone=1
    else
      n=$(( 2 * $(updates_of "$rdrop") ))
      [ -f "$STATE/runs/$rdrop/DONE" ] && rdone=1
    fi
    if [ ! -e "$ctl" ]; then
      # The control starts from the finished baseline (or fresh, below), never from a running one.
      if [ ! -f "$STATE/runs/$base/DONE" ]; then
        [ -f "$STATE/logs/FAILED" ] && return 1
        sleep 120; continue
      fi
      # The baseline's updates are the control's first ones when it stopped before n.
      if [ "$(updates_of "$base")" -lt "$n" ]; then branch "$base" "$control"; continue; fi
      # R-Drop stopped before the baseline did: the control is a fresh run of n updates.
      [ "$rdone" = 1 ] || { sleep 120; continue; }
    fi
    local have; have=$(updates_of "$control")
    if [ "$have" -lt "$n" ]; then
      fit "$control" "$BASE" "${seed[@]}" --set "training.max_updates=$n" --set "validation.patience=0"
      [ "$(updates_of "$control")" -gt "$have" ] || { log "$control made no progress at update $have"; exit 1; }
    elif [ "$rdone" = 1 ]; then
      touch "$ctl/DONE"
      log "trained $control: $(grep -h 'trained' "$STATE/logs/$control.log" | tail -n 1)"
    else
      sleep 120
    fi
  done
  evaluate "$control"
}
# Further seeds train under the same budget as seed 1 (none with BUDGET unset: to convergence).
seed_baseline() { train "baseline-s$1" "$BASE" --set "seed=$1" "${budget[@]}" && evaluate "baseline-s$1"; }
seed_rdrop() {
  train "rdrop-s$1" "$RDROP_RECIPE" --set "seed=$1" --set "criterion.alpha=$(cat "$STATE/scores/chosen-alpha")" \
    "${budget[@]}" && evaluate "rdrop-s$1"
}
# all_significance: paired tests of every pair the report compares, once both have test outputs.
all_significance() {
  significance baseline rdrop
  significance control rdrop
  for seed in $SEEDS; do
    [ "$seed" = 1 ] && continue
    significance "baseline-s$seed" "rdrop-s$seed"
    significance "control-s$seed" "rdrop-s$seed"
  done
}

rm -f "$STATE/logs/FAILED"
log "plan: $PLAN${BUDGET:+ (budget $BUDGET updates)}${ALPHA:+ (α $ALPHA)} (device $DEVICE, state $STATE, binary from $COMMIT, $JOBS at a time, $THREADS threads each)"
for step in $PLAN; do
  case $step in
    baseline) spawn baseline_step ;;
    sweep)
      [ -n "$ALPHA" ] && { log "no sweep: R-Drop trains at the given α $ALPHA"; continue; }
      for a in $ALPHAS; do
        spawn train "sweep-a$a" "$RDROP_RECIPE" --set "criterion.alpha=$a" \
          --set "training.max_updates=$SWEEP_UPDATES" --set "validation.patience=0"
      done ;;
    rdrop)
      if [ -n "$ALPHA" ]; then
        echo "$ALPHA" >"$STATE/scores/chosen-alpha"
        # A sweep run of this α that an earlier invocation finished holds R-Drop's first updates.
        branch "sweep-a$ALPHA" rdrop
        spawn rdrop_step "$ALPHA"
        continue
      fi
      join
      alpha=$(chosen_alpha)
      [ -n "$alpha" ] || { log "no finished sweep run: cannot choose α"; exit 1; }
      echo "$alpha" >"$STATE/scores/chosen-alpha"
      branch "sweep-a$alpha" rdrop
      spawn rdrop_step "$alpha" ;;
    control)
      [ -f "$STATE/scores/chosen-alpha" ] || { log "control needs the rdrop step (its α and run)"; exit 1; }
      [[ " $PLAN " == *" baseline "* ]] || [ -f "$STATE/runs/baseline/DONE" ] \
        || { log "control needs the baseline step"; exit 1; }
      spawn control_step ;;
    seeds)
      [ -f "$STATE/scores/chosen-alpha" ] || { log "seeds need the rdrop step's α"; exit 1; }
      for seed in $SEEDS; do
        [ "$seed" = 1 ] && continue
        spawn seed_baseline "$seed"
        spawn seed_rdrop "$seed"
        spawn control_step "$seed"
      done ;;
    report)
      join
      all_significance
      PYR=${REPORT_PYTHON:-$STATE/py/bin/python}
      if [ -z "${REPORT_PYTHON:-}" ] && { [ ! -x "$PYR" ] || ! "$PYR" -c 'import sacrebleu, sacremoses, matplotlib' 2>/dev/null; }; then
        python3 -m venv "$STATE/py" && "$STATE/py/bin/pip" install -q sacrebleu==2.6.0 sacremoses matplotlib >&2
      fi
      "$PYR" scripts/multi30k_report.py --state "$STATE" --data "$TEST" \
        --tok "$TEST" --commit "$COMMIT" --avg "avg$AVG_LAST" --budget "$BUDGET" --alpha "$ALPHA"
      log "report: $STATE/report.md" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
join
all_significance
