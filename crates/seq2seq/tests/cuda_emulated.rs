//! The search's CUDA top-k kernel (`src/generate/top_k.cu`) runs on the host under the emulator of
//! `rdrop-kernels` (`cuda/emulate.hpp`), against the definition written out in
//! `tests/emulated/top_k.cpp`, so its indexing, reductions and tie rule are checked on every
//! machine; `tests/cuda.rs` checks the real launch against the CPU on a GPU.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); without one the test says so and passes, unless
//! `RDROP_REQUIRE_CXX=1`.

use std::path::Path;

#[test]
fn top_k_kernel_matches_the_definition_under_emulation() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    rdrop_kernels::emulate::run_emulated(
        &here.join("tests/emulated/top_k.cpp"),
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("rdrop-seq2seq-top-k-emulated"),
        "all normalisers and top-k lists match",
    );
}
