#!/usr/bin/env bash
# Builds rdrop with the `cuda` feature on a machine that has neither a GPU nor a CUDA toolkit.
#
#   scripts/build-cuda.sh            # -> dist/rdrop-cuda (stripped release binary)
#   scripts/build-cuda.sh --tests    # also -> dist/gpu/cuda-tests.tar.xz (test binaries for scripts/gpu-check.sh)
#   scripts/build-cuda.sh --clippy   # only lints the workspace with every `cuda` feature on (CI lints without)
#
# How: CUDA 13.0 comes from NVIDIA's PyPI wheels (pinned below), unpacked with pip into a cache folder
# that git ignores; a CUDA_HOME is assembled from them; the driver library, which only ships with a GPU,
# is replaced at link time by a stub (scripts/cuda/gen-libcuda-stub.sh). Nothing is installed system-wide.
#
# The binary runs on Hopper GPUs (H100/H200: kernels built for sm_90a; set CUDA_COMPUTE_CAP for others)
# with an NVIDIA driver for CUDA >= 13.0 (driver 580+), and needs these on the library path there:
# libcuda.so.1 (the driver), libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libcudart.so.13
# (e.g. PyTorch's nvidia/cu13/lib, or /usr/local/cuda/lib64). Never put the stub on the path there.
#
# Environment (all optional):
#   RDROP_CUDA_CACHE   where the wheels, CUDA_HOME and stub go   (default: <repo>/.cache/cuda13)
#   CARGO_TARGET_DIR   cargo's target dir                         (default: <repo>/target-cuda)
#   CUDA_COMPUTE_CAP   GPU compute capability, 90 = H100/H200     (default: 90)
#   JOBS               cargo -j                                   (default: cargo's)
#   CUDAFORGE_THREADS  parallel nvcc jobs for candle's kernels     (default: cudaforge's)
#   PYTHON             python with pip, only to unpack the wheels  (default: python3)
#   CUDA_TEST_PACKAGES crates whose tests --tests bundles (default: rdrop-seq2seq rdrop-loss rdrop-train)
#
# Cost on 2 cores: ~1.4 GB of wheels (~30 s to fetch), then ~25-60 min for the first build, most of
# it nvcc compiling candle's kernels; later builds reuse the target dir.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

want_tests=0 want_clippy=0
for arg in "$@"; do
  case "$arg" in
    --tests) want_tests=1 ;;
    --clippy) want_clippy=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-cuda: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

cache=${RDROP_CUDA_CACHE:-$repo/.cache/cuda13}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
PYTHON=${PYTHON:-python3}
dist=$repo/dist

# CUDA 13.0.x on purpose: PTX from nvcc 13.N is JIT-compiled only by drivers for CUDA >= 13.N, and the
# GPU machines this targets run driver 580 (CUDA 13.0). A newer nvcc fails at the first kernel load
# there with CUDA_ERROR_UNSUPPORTED_PTX_VERSION.
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.1.0.3
  nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88
)
say() { echo "build-cuda: $*" >&2; }
t_start=$(date +%s)

# --- 1. toolkit wheels ----------------------------------------------------------------------------
site=$cache/site
stamp=$site/.pins
if [ "$(cat "$stamp" 2>/dev/null)" != "${wheels[*]}" ]; then
  say "unpacking ${#wheels[@]} CUDA wheels into $site"
  rm -rf "$site"
  mkdir -p "$site"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --only-binary=:all: --target "$site" "${wheels[@]}"
  echo "${wheels[*]}" >"$stamp"
fi
cu=$site/nvidia/cu13
for f in bin/nvcc bin/ptxas nvvm/bin/cicc include/cuda_runtime.h include/crt/host_config.h \
  include/cublas_v2.h include/curand.h; do
  [ -e "$cu/$f" ] || { say "missing $cu/$f: the wheel layout changed?"; exit 1; }
done

# --- 2. a CUDA_HOME made of links into the wheels ---------------------------------------------------
home=$cache/cuda-home
rm -rf "$home"
mkdir -p "$home/lib/stubs" "$home/include"
ln -s "$cu/bin" "$home/bin"
ln -s "$cu/nvvm" "$home/nvvm"
for h in "$cu"/include/*; do ln -s "$h" "$home/include/"; done
for so in "$cu"/lib/lib*.so*; do ln -s "$so" "$home/lib/"; done
# The wheels ship only versioned names (libcublas.so.13); the linker's -lcublas wants libcublas.so.
for so in "$home"/lib/lib*.so.*; do
  base=${so%%.so.*}.so
  [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
done
for lib in cudart cublas cublasLt curand nvrtc; do
  [ -e "$home/lib/lib$lib.so" ] || { say "no lib$lib.so in $cu/lib"; exit 1; }
done

# --- 3. the driver stub, from the cudarc version Cargo.lock pins ---------------------------------------
cargo fetch --locked >/dev/null
cudarc_ver=$(awk '/^name = "cudarc"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$cudarc_ver" ] || { say "cudarc is not in Cargo.lock"; exit 1; }
cudarc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$cudarc_ver" | head -n 1)
bash "$repo/scripts/cuda/gen-libcuda-stub.sh" "$cudarc_src" "$home/lib/stubs"

# --- 4. build ---------------------------------------------------------------------------------------
export CUDA_HOME=$home CUDA_PATH=$home CUDA_ROOT=$home CUDA_TOOLKIT_ROOT_DIR=$home
export PATH=$home/bin:$PATH
# cudarc would read the version from `nvcc --version`; stating it keeps the build independent of that.
export CUDARC_CUDA_VERSION=13000
# Build scripts and tests that run here load libcublas & co. from the wheels and the driver stub.
export LD_LIBRARY_PATH=$home/lib:$home/lib/stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
jobs=()
[ -n "${JOBS:-}" ] && jobs=(-j "$JOBS")
say "nvcc: $(nvcc --version | tail -n 2 | head -n 1); compute cap $CUDA_COMPUTE_CAP; target $CARGO_TARGET_DIR"

if [ "$want_clippy" = 1 ]; then
  # Release profile: its build scripts' output (candle's PTX) is the build's, so nothing recompiles.
  cargo clippy --locked --release "${jobs[@]}" --workspace --all-targets \
    --features cuda,rdrop-seq2seq/cuda,rdrop-loss/cuda,rdrop-train/cuda -- -D warnings
  say "clippy with cuda: clean ($(($(date +%s) - t_start)) s)"
  exit 0
fi

cargo build --locked --release "${jobs[@]}" --features cuda --bin rdrop
mkdir -p "$dist"
strip -o "$dist/rdrop-cuda" "$CARGO_TARGET_DIR/release/rdrop"

if [ "$want_tests" = 1 ]; then
  # The test binaries of the library crates (model, criterion, trainer), built against the same CUDA
  # candle. Each embeds candle's kernels (~30 MB, mostly PTX text), so they travel as one xz archive
  # whose 192 MiB window spans several binaries and stores the shared kernels about once.
  # The CLI tests (tests/*.rs) are left out: they drive the binary, which travels itself.
  # CUDA_TEST_PACKAGES narrows the list to keep the archive small to copy.
  pkgs=(${CUDA_TEST_PACKAGES:-rdrop-seq2seq rdrop-loss rdrop-train})
  sel=() feats=()
  for p in "${pkgs[@]}"; do sel+=(-p "$p"); feats+=("$p/cuda"); done
  list=$(mktemp)
  cargo test --locked --release "${jobs[@]}" "${sel[@]}" --features "$(IFS=,; echo "${feats[*]}")" --no-run \
    --message-format=json-render-diagnostics |
    "$PYTHON" -c '
import json, os, sys
repo = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        pkg = os.path.relpath(os.path.dirname(m["manifest_path"]), repo)
        name = pkg.replace("/", "_") + "--" + m["target"]["kind"][0] + "--" + m["target"]["name"]
        print(name, pkg, m["executable"])
' "$repo" >"$list"
  # Unpacked only in a temporary dir: what stays is the archive, in dist/gpu/ (what the GPU check carries).
  stage=$(mktemp -d)
  mkdir -p "$stage/cuda-tests" "$dist/gpu"
  # MANIFEST: "<binary> <package dir>": cargo runs a test binary from its package dir, and so does
  # gpu-check.sh; "#root" is where they were built (their fixtures' paths are compiled in).
  echo "#root $repo" >"$stage/cuda-tests/MANIFEST"
  while read -r name pkg exe; do
    strip -o "$stage/cuda-tests/$name" "$exe"
    echo "$name $pkg" >>"$stage/cuda-tests/MANIFEST"
  done <"$list"
  ntests=$(wc -l <"$list")
  rm -f "$list"
  cp "$dist/rdrop-cuda" "$stage/cuda-tests/rdrop"
  say "compressing $(du -sh "$stage/cuda-tests" | cut -f1) of test binaries"
  tar -C "$stage" -cf - cuda-tests | xz -T1 --lzma2=preset=6,dict=192MiB >"$dist/gpu/cuda-tests.tar.xz"
  rm -rf "$stage"
  say "test binaries: $ntests -> $dist/gpu/cuda-tests.tar.xz ($(du -h "$dist/gpu/cuda-tests.tar.xz" | cut -f1))"
fi

# --- 5. report --------------------------------------------------------------------------------------
say "built in $(($(date +%s) - t_start)) s: $dist/rdrop-cuda ($(du -h "$dist/rdrop-cuda" | cut -f1))"
say "needs (DT_NEEDED): $(readelf -d "$dist/rdrop-cuda" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
say "to run here (no GPU): LD_LIBRARY_PATH=$home/lib:$home/lib/stubs $dist/rdrop-cuda --help"
