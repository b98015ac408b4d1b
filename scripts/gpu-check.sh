#!/usr/bin/env bash
# The CUDA check: one prepared run on a machine with an NVIDIA GPU (written for an H100/H200 with
# driver 580 = CUDA 13.0, python3 with torch + transformers + sentencepiece, no network), ~5-8 min.
#
#   On the build machine (no GPU needed):
#     scripts/build-cuda.sh --tests      # dist/gpu/cuda-tests.tar.xz: rdrop + the library test binaries
#     scripts/gpu-check.sh --prepare     # + dist/gpu/peers/ (the PyTorch peer's model maker), the
#                                        #   opus-size tokenizer (~2 min), Multi30k (for stage 5) and
#                                        #   the report's sacrebleu/sacremoses wheels; prints sizes
#   On the GPU machine, from the repository root, with dist/gpu/ beside it:
#     OUT=/some/dir scripts/gpu-check.sh # results: $OUT/gpu-check.json, logs: $OUT/gpu-check.log
#
# dist/ is git-ignored, so copy dist/gpu to the GPU machine along with the checkout; --prepare prints
# its size.
#
# What it runs, each stage under its own time limit, none stopping the others (STAGES="1 3" picks some;
# the model and corpus of stage 2 are made whatever STAGES says):
#  1. every test binary of rdrop-seq2seq, rdrop-loss and rdrop-train built with `--features cuda`,
#     with RDROP_TEST_DEVICE=cuda and RDROP_REQUIRE_CUDA=1 (a CUDA test that would skip fails
#     instead); tests/cuda.rs of seq2seq compares CPU and CUDA logits (f32, within 1e-3) on the
#     fixture checkpoints and the gradients of a training loss; rdrop-loss's compares the criteria.
#  2. training throughput, R-Drop (alpha 5, label smoothing 0.1, AdamW), on an opus-mt-sized Marian
#     (d_model 512, 8 heads, 6+6 layers, ffn 2048, vocab 58101, random init, made there by
#     ../shared/peers/make_tiny_marian.py --preset opus, tokenizer made by --prepare): PyTorch + transformers
#     (scripts/cuda/bench_train_cuda.py) and `rdrop train --device cuda` on the same checkpoint, batches
#     of 64 sentence pairs of 58-64 tokens (~4096 padded tokens), f32 and bf16. Tokens/s = non-pad
#     target tokens of the original (undoubled) batch per second; peak GPU memory from torch's
#     allocator and, for both, from nvidia-smi sampled every 100 ms (minus the idle reading).
#     rdrop bf16 runs only if the recipe accepts `training.precision = "bf16"`.
#     Then where the time goes: torch's --phase-steps and a short `rdrop train --profile-phases` run
#     each time batch, forward, loss, backward and optimizer with a device sync after each (phase_ms).
#     rdrop f32 runs twice: with its CUDA kernels (fused loss, softmax, layer norm, byte-mask dropout)
#     and with RDROP_CUDA_KERNELS=0 (candle's composed ops), to measure what the kernels change.
# 2b. with NCU=1 (and ncu on PATH), GPU time per kernel over 2 training steps of each (ncu-*.csv and
#     the top 25 kernels in gpu-check.json); ncu replays each kernel, so this adds minutes.
#  3. `rdrop translate --device cuda --token-ids` throughput: 1024 sources of 20 random ids, exactly
#     32 new tokens each (min = max), greedy and beam 4, batches of 64, whole-process wall time (and
#     without the model's loading); `--profile-phases` on 256 of them (encode, decoder steps, logits
#     download, cache row selection, host search per step); and transformers' `generate` on the same
#     GPU, model, sources and settings (scripts/cuda/bench_translate_cuda.py, median of 2 passes
#     after a warm-up batch).
#  4. the opus-mt fine-tuning recipe (recipes/opus-mt-de-en-rdrop.toml) end to end on stage 2's
#     transformers-made checkpoint: E2E_UPDATES (default 200) updates in bf16 with validation and
#     checkpoints, then `rdrop score` of best/ on the GPU and on the CPU: the same log-probabilities
#     (within 1e-4 relative) show the saved checkpoint reloads as trained.
#  5. only when STAGES names it: the Multi30k experiment (scripts/multi30k-experiment.sh --device cuda,
#     on the data --prepare copied into dist/gpu/multi30k), trainings M30K_JOBS (default 5: the baseline beside the 4 sweep runs) at a time,
#     under M30K_LIMIT seconds (default 480); its settings pass through (e.g. BUDGET=2000 ALPHA=1).
#     Back in $OUT: report.md and its curves, and multi30k-state.tar.xz, the experiment's state without
#     model files (logs, metrics, test outputs, scores), which scripts/multi30k-experiment.sh
#     --plan report continues on any machine after `tar -C STATE -xf`. A run cut short by the limit
#     still returns what it finished.
#
# Op audit (candle 0.11.1, read from its sources): every op the model and criteria use has a CUDA
# kernel and a backward: matmul (cuBLAS; the backward matmuls transposed views), exp/log/sqrt/silu/
# gelu/neg/recip/affine/powf, sum/max reductions, broadcast ops, where_cond (backward masks),
# gather (backward scatter_add), index_select/embedding (backward index_add), cat/narrow/transpose,
# to_dtype (f32<->bf16), cmp, and dropout masks (elementwise mul). Not differentiable on any device:
# the fused candle_nn ops (ops::softmax_last_dim, ops::layer_norm and LayerNorm::forward on
# contiguous input with a bias, ops::rms_norm): rdrop's own ops (seq2seq's ops::softmax_last_dim,
# ops::layer_norm) launch the same kernels forward and add a backward in tensor ops.
# CUDA-only pitfall: cuBLAS matmul accepts only operands whose last two dims are contiguous or
# transposed and whose batch dims collapse to one stride (CudaError::MatMulNonContiguous), where the
# CPU accepts any strides: call .contiguous() on q/k/v after the head transpose.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
dist=$repo/dist

gpu=$dist/gpu
if [ "${1:-}" = "--prepare" ]; then
  set -e
  [ -f "$gpu/cuda-tests.tar.xz" ] || { echo "no $gpu/cuda-tests.tar.xz: run scripts/build-cuda.sh --tests" >&2; exit 1; }
  peers=${PEERS:-$repo/../shared/peers}
  mkdir -p "$gpu/peers"
  cp "$peers/make_tiny_marian.py" "$gpu/peers/"
  # The opus-size model's tokenizer (sentencepiece trained on synthetic text; it depends only on
  # the vocab size and seed), made here so the GPU's minutes go to the GPU: a 1-layer stand-in model
  # with the same vocab gives the same files.
  if [ ! -f "$gpu/opus-tokenizer/vocab.json" ]; then
    PY=$(bash "$repo/scripts/py-env.sh")/bin/python
    tmp=$(mktemp -d)
    "$PY" "$peers/make_tiny_marian.py" --preset opus --d-model 8 --heads 1 --layers 1 --ffn 8 --out "$tmp/m" >/dev/null
    mkdir -p "$gpu/opus-tokenizer"
    cp "$tmp"/m/{source.spm,target.spm,vocab.json,tokenizer_config.json} "$gpu/opus-tokenizer/"
    rm -rf "$tmp"
  fi
  # Stage 5's data: the GPU machine has no ../shared. Only what the experiment reads.
  m30k=$peers/../data/multi30k
  if [ -d "$m30k/raw" ]; then
    mkdir -p "$gpu/multi30k/raw" "$gpu/multi30k/tok"
    cp "$m30k"/raw/{train,val,test_2016_flickr,test_2017_flickr}.{de,en} "$gpu/multi30k/raw/"
    cp "$m30k"/tok/test_201[67]_flickr.lc.norm.tok.en "$gpu/multi30k/tok/"
  else
    echo "no Multi30k at $m30k: stage 5 will not run" >&2
  fi
  # The report's Python packages at the versions the CPU runs use (the GPU machine's sacrebleu may
  # differ and it has no sacremoses; both are pure Python, their dependencies are there).
  if [ ! -f "$gpu/wheels/.pins" ]; then
    mkdir -p "$gpu/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$gpu/wheels" \
      sacrebleu==2.6.0 sacremoses==0.2.0 && echo "sacrebleu==2.6.0 sacremoses==0.2.0" >"$gpu/wheels/.pins"
  fi
  tracked=$(git ls-files -z | du -ch --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
  echo "to copy: dist/gpu = $(du -sh "$gpu" | cut -f1), tracked tree = $tracked"
  echo "then, on the GPU machine: bash scripts/gpu-check.sh"
  exit 0
fi

W=${GPU_CHECK_WORK:-/tmp/gpu-check}
OUT=${OUT:-$W/out}
rm -rf "$W/results" "$W/runs"
mkdir -p "$W/results" "$W/runs" "$OUT"
log=$OUT/gpu-check.log
: >"$log"
t0=$(date +%s)
PY=${PYTHON:-python3}
say() { echo "[gpu-check $(($(date +%s) - t0))s] $*" | tee -a "$log" >&2; }
result() { printf '%s\n' "$2" >"$W/results/$1.json"; }
# STAGES (default "1 2 3 4") picks stages, so a check can be split over calls; stage 2 always
# makes the model and corpus the others use.
STAGES=${STAGES:-1 2 3 4}
want() { [[ " $STAGES " == *" $1 "* ]]; }
# Runs a stage's command under a time limit, output to the log; never stops the script.
stage() {
  local limit=$1
  shift
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && say "  timed out after ${limit}s: $*"
  return $rc
}

# --- 0. the machine, and the libraries the binary needs ------------------------------------------------
say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
result machine "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
  head -n 1 | "$PY" -c 'import json,sys; n,d,m=[x.strip() for x in sys.stdin.read().split(",")]; print(json.dumps({"gpu":n,"driver":d,"memory":m}))' 2>/dev/null || echo null)"
# PyTorch's CUDA 13 wheels hold cuBLAS & co.; the toolkit, when installed, too. Never the build's stub.
libdirs=$("$PY" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = [os.path.dirname(p) for p in nvidia.__path__] if hasattr(nvidia, "__path__") else []
except Exception:
    roots = []
dirs = []
for r in roots:
    dirs += glob.glob(os.path.join(r, "nvidia", "cu13", "lib")) + glob.glob(os.path.join(r, "nvidia", "*", "lib"))
print(":".join(d for d in dict.fromkeys(dirs) if os.path.isdir(d)))
EOF
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && libdirs=${libdirs:+$libdirs:}$d
done
export LD_LIBRARY_PATH=${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

[ -f "$gpu/cuda-tests.tar.xz" ] || { say "no dist/gpu/cuda-tests.tar.xz: carry dist/gpu (see the header)"; exit 1; }
rm -rf "$W/cuda-tests"
xz -dc "$gpu/cuda-tests.tar.xz" | tar -C "$W" -xf -
bins=$W/cuda-tests
rdrop=$bins/rdrop
missing=$(ldd "$rdrop" | grep "not found")
if [ -n "$missing" ]; then
  say "rdrop cannot load: $missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
fi
say "rdrop links: $(ldd "$rdrop" | grep -E 'libcu|libnv' | awk '{print $1 "=" $3}' | tr '\n' ' ')"

# The test binaries look for their fixtures under the directory they were built in (env!
# CARGO_MANIFEST_DIR): make that path lead here.
built_root=$(sed -n 's/^#root //p' "$bins/MANIFEST")
if [ -n "$built_root" ] && [ "$built_root" != "$repo" ] && [ ! -e "$built_root" ]; then
  mkdir -p "$(dirname "$built_root")" && ln -s "$repo" "$built_root"
fi

# --- 1. the library tests on CUDA -------------------------------------------------------------------
say "stage 1: tests"
if want 1; then
tests_json="["
while read -r name pkg; do
  case "$name" in "#"* | "") continue ;; esac
  tlog=$W/runs/test-$name.log
  (cd "$repo/$pkg" && RDROP_TEST_DEVICE=cuda RDROP_REQUIRE_CUDA=1 RUST_BACKTRACE=1 \
    timeout --kill-after=10 150 "$bins/$name" --test-threads=4 --nocapture) >"$tlog" 2>&1
  rc=$?
  summary_line=$(grep -E "^test result:" "$tlog" | tail -n 1)
  say "  $name: rc $rc, ${summary_line:-no summary}"
  if [ $rc -ne 0 ]; then
    tail -n 60 "$tlog" >>"$log"
  else
    grep -E "skipping|\|cuda" "$tlog" | head -n 20 >>"$log"
  fi
  tests_json+="{\"binary\":\"$name\",\"rc\":$rc,\"result\":\"${summary_line//\"/}\"},"
done <"$bins/MANIFEST"
result tests "${tests_json%,}]"
fi

# --- 2. training throughput -------------------------------------------------------------------------
say "stage 2: training throughput"
model=$W/opus
# PRESET=tiny makes a small model instead: only to try this script out.
needs_model=0
{ want 2 || want 3 || want 4; } && needs_model=1
if [ "$needs_model" = 0 ]; then
  : # stage 5 alone needs no opus-size model
elif [ "${PRESET:-opus}" = opus ] && [ -f "$gpu/opus-tokenizer/vocab.json" ]; then
  stage 180 "$PY" "$gpu/peers/make_tiny_marian.py" --preset opus --no-tokenizer --out "$model" &&
    cp "$gpu"/opus-tokenizer/* "$model/"
else
  stage 240 "$PY" "$gpu/peers/make_tiny_marian.py" --preset "${PRESET:-opus}" --out "$model"
fi
[ "$needs_model" = 1 ] && [ ! -f "$model/vocab.json" ] && say "  could not make the opus-size model"
B=64 L=64 MINF=0.9 STEPS=30 WARM=5
smi_peak() { # runs "$@" while sampling GPU memory; prints the peak above idle (MiB) to $W/peak
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$W/smi.log" 2>/dev/null &
  local smi=$!
  sleep 0.3
  "$@"
  local rc=$?
  kill "$smi" 2>/dev/null
  wait "$smi" 2>/dev/null
  "$PY" scripts/cuda/gpu_check_util.py peak "$W/smi.log" >"$W/peak"
  return $rc
}
if [ -f "$model/config.json" ]; then
  if want 2; then
  for prec in f32 bf16; do
    rm -f "$W/torch.jsonl"
    smi_peak stage 150 "$PY" scripts/cuda/bench_train_cuda.py --model-dir "$model" --mode rdrop \
      --precision $prec --batch $B --src-len $L --tgt-len $L --min-frac $MINF --steps $STEPS \
      --warmup $WARM --phase-steps 10 --json-out "$W/torch.jsonl"
    if [ -s "$W/torch.jsonl" ]; then
      result train_torch_$prec "$("$PY" -c 'import json,sys; r=json.loads(open(sys.argv[1]).read()); r["peak_gpu_smi_mib"]=json.loads(open(sys.argv[2]).read()); print(json.dumps(r))' "$W/torch.jsonl" "$W/peak")"
      say "  torch $prec: $(cut -c1-400 "$W/torch.jsonl")"
    fi
  done
  fi

  # The same pairs for rdrop, as text: whole-word pieces of the model's vocabulary, so sentence
  # lengths in tokens match the torch batches (58-64 tokens with </s>).
  "$PY" scripts/cuda/gpu_check_util.py corpus "$model" "$W/corpus" 4000 $L $MINF 1 2>>"$log"
  head -n 200 "$W/corpus.src" >"$W/valid.src"
  head -n 200 "$W/corpus.tgt" >"$W/valid.tgt"
  updates=$((WARM + STEPS))
  cat >"$W/bench.toml" <<EOF
# opus-mt-sized R-Drop fine-tuning step, for throughput only (scripts/gpu-check.sh)
output_dir = "$W/rdrop-run"
device = "cuda"
[model]
pretrained = "$model"
[tokenizer]
kind = "model"
[data]
train = { source = "$W/corpus.src", target = "$W/corpus.tgt" }
valid = { source = "$W/valid.src", target = "$W/valid.tgt" }
max_len = 128
[criterion]
kind = "rdrop"
alpha = 5.0
label_smoothing = 0.1
[optimizer]
lr = 5e-5
weight_decay = 0.01
[schedule]
kind = "constant"
warmup_updates = 1
[batching]
max_tokens = $((B * L))
[training]
max_updates = $updates
max_epochs = 0
log_every = $WARM
[validation]
every_updates = 0
every_epoch = false
metrics = ["loss"]
[checkpoint]
every_updates = 0
keep_last = 1
EOF
  # f32-composed: f32 with RDROP_CUDA_KERNELS=0, the composed candle ops instead of rdrop's CUDA
  # kernels (loss, softmax, layer norm, dropout), to measure what the kernels change.
  if want 2; then
  for prec in f32 bf16 f32-composed; do
    set_prec=() env_prefix=()
    key=${prec//-/_}
    if [ $prec = f32-composed ]; then env_prefix=(env RDROP_CUDA_KERNELS=0); fi
    if [ $prec = bf16 ]; then
      if ! "$rdrop" train "$W/bench.toml" --set 'training.precision="bf16"' --print-recipe >/dev/null 2>&1; then
        say "  rdrop bf16: the recipe has no training.precision; skipped"
        result train_rdrop_bf16 '{"skipped":"recipe has no training.precision"}'
        continue
      fi
      set_prec=(--set 'training.precision="bf16"')
    fi
    rm -rf "$W/rdrop-run"
    smi_peak stage 240 "${env_prefix[@]}" "$rdrop" train "$W/bench.toml" --device cuda --quiet "${set_prec[@]}"
    rc=$?
    if [ -f "$W/rdrop-run/metrics.jsonl" ]; then
      r=$("$PY" scripts/cuda/gpu_check_util.py rdrop-train "$W/rdrop-run/metrics.jsonl")
      result train_rdrop_$key "$("$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); r["rc"]=int(sys.argv[3]); r["peak_gpu_smi_mib"]=json.loads(open(sys.argv[2]).read()); print(json.dumps(r))' "$r" "$W/peak" $rc)"
      say "  rdrop $prec: $r"
    else
      say "  rdrop $prec: no metrics (rc $rc); see the log"
      result train_rdrop_$key "{\"rc\":$rc}"
    fi
    # Where an update's time goes: a short run synchronised after each phase (slower, so apart
    # from the throughput run), beside torch's phase_ms from the same batches.
    rm -rf "$W/rdrop-run"
    stage 150 "${env_prefix[@]}" "$rdrop" train "$W/bench.toml" --device cuda --quiet --profile-phases "${set_prec[@]}" \
      --set "training.max_updates=$((2 * WARM + 10))" --set "training.log_every=$((WARM + 5))"
    if [ -f "$W/rdrop-run/metrics.jsonl" ]; then
      r=$("$PY" scripts/cuda/gpu_check_util.py rdrop-train "$W/rdrop-run/metrics.jsonl")
      result phases_rdrop_$key "$r"
      say "  rdrop $prec phases: $r"
    fi
  done
  fi
fi

# --- 2b. per-kernel profile (NCU=1; ncu serialises and replays kernels: minutes) -------------------
if want 2 && [ "${NCU:-0}" = 1 ] && command -v ncu >/dev/null && [ -f "$W/bench.toml" ]; then
  say "stage 2b: per-kernel GPU time (ncu), 2 training steps each"
  ncu_args=(--csv --metrics gpu__time_duration.sum --launch-count "${NCU_KERNELS:-4000}")
  rm -rf "$W/rdrop-run"
  stage 240 ncu "${ncu_args[@]}" --log-file "$W/ncu-rdrop.csv" "$rdrop" train "$W/bench.toml" \
    --device cuda --quiet --set training.max_updates=2
  stage 240 ncu "${ncu_args[@]}" --log-file "$W/ncu-torch.csv" "$PY" scripts/cuda/bench_train_cuda.py \
    --model-dir "$model" --mode rdrop --precision f32 --batch $B --src-len $L --tgt-len $L \
    --min-frac $MINF --steps 2 --warmup 0
  for impl in rdrop torch; do
    if [ -s "$W/ncu-$impl.csv" ]; then
      cp "$W/ncu-$impl.csv" "$OUT/"
      r=$("$PY" scripts/cuda/gpu_check_util.py ncu-top "$W/ncu-$impl.csv" 25)
      result ncu_$impl "$r"
      say "  ncu $impl: $(echo "$r" | cut -c1-300)"
    fi
  done
fi

# --- 3. translate throughput ------------------------------------------------------------------------
say "stage 3: translate throughput"
if want 3 && [ -f "$model/config.json" ]; then
  vocab=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$model/config.json")
  "$PY" scripts/cuda/gpu_check_util.py ids "$W/src.ids" 1024 20 "$vocab" 7
  head -n 256 "$W/src.ids" >"$W/src256.ids"
  tr_json="["
  for beam in 1 4; do
    rm -f "$W/hyp.ids"
    s=$(date +%s.%N)
    stage 120 "$rdrop" translate --model "$model" --device cuda --token-ids --input "$W/src.ids" \
      --output "$W/hyp.ids" --beam $beam --min-new-tokens 32 --max-new-tokens 32 --batch-size 64 --quiet
    rc=$?
    e=$(date +%s.%N)
    [ $rc -ne 0 ] && rm -f "$W/hyp.ids"
    secs=$("$PY" -c "print(round($e - $s, 3))")
    lines=0
    [ -f "$W/hyp.ids" ] && lines=$(wc -l <"$W/hyp.ids")
    # Where a step's time goes (every phase synchronised, so a little slower): 256 sources.
    # (not through `stage`, which sends stderr to the log: the phases line is read from it here)
    timeout --kill-after=10 90 "$rdrop" translate --model "$model" --device cuda --token-ids \
      --input "$W/src256.ids" --output "$W/hyp256.ids" --beam $beam --min-new-tokens 32 \
      --max-new-tokens 32 --batch-size 64 --quiet --profile-phases >>"$log" 2>"$W/phases.txt"
    cat "$W/phases.txt" >>"$log"
    phases=$(sed -n 's/^phases: //p' "$W/phases.txt" | tail -n 1)
    load=$("$PY" -c "import json,sys; print(json.loads(sys.argv[1] or '{}').get('load_s', 0))" "$phases")
    say "  rdrop beam $beam: rc $rc, $lines lines in ${secs}s (load ${load}s); phases $phases"
    tr_json+="{\"engine\":\"rdrop\",\"beam\":$beam,\"rc\":$rc,\"batch\":64,\"sentences\":$lines,\"new_tokens_each\":32,\"wall_s\":$secs,\"load_s\":$load,"
    tr_json+="\"sent_per_s\":$("$PY" -c "print(round($lines / max($secs, 1e-9), 1))"),"
    tr_json+="\"sent_per_s_after_load\":$("$PY" -c "print(round($lines / max($secs - $load, 1e-9), 1))"),"
    tr_json+="\"phases_256\":${phases:-null}},"
    # transformers' generate on the same GPU, model, sources and settings.
    # (stdout to a file of its own: `stage` would send it to the log)
    if timeout --kill-after=10 150 "$PY" scripts/cuda/bench_translate_cuda.py --model-dir "$model" \
        --ids "$W/src.ids" --beam $beam --batch 64 --new-tokens 32 --repeats 2 \
        >"$W/peer-tr.json" 2>>"$log"; then
      peer=$(tail -n 1 "$W/peer-tr.json")
      say "  transformers beam $beam: $peer"
      tr_json+="$peer,"
    fi
  done
  result translate "${tr_json%,}]"
fi

# --- 4. the mission's main use, end to end ------------------------------------------------------------
# The opus-mt fine-tuning recipe itself on the opus-size checkpoint transformers made in stage 2 (with
# its spm tokenizers), bf16 on the GPU, validating and checkpointing; then the saved best/ reloads and
# scores the validation pairs on the GPU and on the CPU: the same log-probabilities.
say "stage 4: fine-tuning recipe end to end"
if want 4 && [ -f "$model/config.json" ] && [ -f "$W/corpus.src" ]; then
  E2E_UPDATES=${E2E_UPDATES:-200}
  rm -rf "$W/e2e"
  head -n 64 "$W/valid.src" >"$W/e2e-valid.src"
  head -n 64 "$W/valid.tgt" >"$W/e2e-valid.tgt"
  stage 240 "$rdrop" train recipes/opus-mt-de-en-rdrop.toml --device cuda --quiet \
    --set "output_dir=\"$W/e2e\"" --set "model.pretrained=\"$model\"" \
    --set "data.train={ source = \"$W/corpus.src\", target = \"$W/corpus.tgt\" }" \
    --set "data.valid={ source = \"$W/e2e-valid.src\", target = \"$W/e2e-valid.tgt\" }" \
    --set 'training.precision="bf16"' --set "training.max_updates=$E2E_UPDATES" --set training.threads=0 \
    --set "validation.every_updates=$((E2E_UPDATES / 2))" --set validation.every_epoch=false \
    --set validation.max_sentences=64 --set training.log_every=20 \
    --set "checkpoint.every_updates=$((E2E_UPDATES / 2))" --set schedule.warmup_updates=20
  rc=$?
  for dev in cuda cpu; do
    stage 120 "$rdrop" score --model "$W/e2e/best" --source "$W/e2e-valid.src" --target "$W/e2e-valid.tgt" \
      --device $dev --quiet --output "$W/e2e-score-$dev.txt"
  done
  r=$("$PY" - "$W" "$rc" <<'PYEOF'
import json, os, sys
w, rc = sys.argv[1], int(sys.argv[2])
out = {"rc": rc}
recs = [json.loads(l) for l in open(os.path.join(w, "e2e", "metrics.jsonl"))] if os.path.exists(os.path.join(w, "e2e", "metrics.jsonl")) else []
train = [r for r in recs if r.get("kind") == "train"]
valid = [r for r in recs if r.get("kind") == "valid"]
if train:
    out.update(updates=train[-1]["update"], first_last_loss=[train[0].get("loss"), train[-1].get("loss")],
               tgt_tokens_per_s=train[-1].get("tokens_per_s"))
out["valid"] = [{k: r.get(k) for k in ("update", "loss", "bleu")} for r in valid]
def scores(dev):
    p = os.path.join(w, f"e2e-score-{dev}.txt")
    return [float(l.split()[0]) for l in open(p)] if os.path.exists(p) else []
g, c = scores("cuda"), scores("cpu")
out["scored"] = [len(g), len(c)]
if g and len(g) == len(c):
    out["max_abs_score_diff_cuda_cpu"] = max(abs(a - b) for a, b in zip(g, c))
    out["max_rel_score_diff_cuda_cpu"] = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(g, c))
    out["same_scores"] = out["max_rel_score_diff_cuda_cpu"] <= 1e-4
print(json.dumps(out))
PYEOF
)
  say "  e2e: $r"
  result e2e_finetune "$r"
fi

# --- 5. the Multi30k experiment on the GPU (only when asked: it takes a call of its own) ------------
if want 5; then
  say "stage 5: Multi30k experiment"
  if [ -d "$gpu/multi30k/raw" ]; then
    M30K_LIMIT=${M30K_LIMIT:-480}
    m30k_state=$W/multi30k
    site=$W/py-site
    rm -rf "$site" && mkdir -p "$site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$gpu"/wheels/*.whl >>"$log" 2>&1 ||
      say "  could not install the report's wheels"
    # The report runs with the machine's Python, the carried wheels first on its path.
    printf '#!/bin/sh\nPYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH} exec %s "$@"\n' "$site" "$(command -v "$PY")" >"$W/report-python"
    chmod +x "$W/report-python"
    STATE=$m30k_state DATA=$gpu/multi30k/raw RDROP=$rdrop JOBS=${M30K_JOBS:-5} REPORT_PYTHON=$W/report-python \
      stage "$M30K_LIMIT" bash scripts/multi30k-experiment.sh --device cuda
    rc=$?
    say "  experiment rc $rc: $(tail -n 1 "$m30k_state/logs/experiment.log" 2>/dev/null)"
    grep -h "trained\|valid at" "$m30k_state"/logs/*.log 2>/dev/null | tail -n 40 >>"$log"
    for f in report.md curves-main-updates.png curves-main-wall.png; do
      [ -f "$m30k_state/$f" ] && cp "$m30k_state/$f" "$OUT/"
    done
    # Everything but the models and the binary: what the report and later scoring read.
    tar -C "$m30k_state" --exclude='./runs/*/checkpoints' --exclude='./runs/*/best' --exclude='./avg' \
      --exclude='./bin/rdrop' --exclude='./py' -cf - . | xz -T4 >"$OUT/multi30k-state.tar.xz"
    say "  state: $(du -h "$OUT/multi30k-state.tar.xz" | cut -f1) in \$OUT/multi30k-state.tar.xz"
    result multi30k "{\"rc\":$rc,\"limit_s\":$M30K_LIMIT}"
  else
    say "  no dist/gpu/multi30k: run scripts/gpu-check.sh --prepare where ../shared is"
  fi
fi

# --- summary ----------------------------------------------------------------------------------------
"$PY" scripts/cuda/gpu_check_util.py summary "$W" "$OUT/gpu-check.json" >>"$log" 2>&1
say "done in $(($(date +%s) - t0)) s: $OUT/gpu-check.json"
cat "$OUT/gpu-check.json"
