//! The crate's CUDA kernels run on the host under the emulator of `rdrop-kernels`
//! (`cuda/emulate.hpp`), against definitions written out in `tests/emulated/*.cpp`: the search's
//! top-k (`src/generate/top_k.cu`: indexing, reductions, tie rule), the feed-forward's bias +
//! activation (`src/ops/bias_act.cu`: values, derivatives) and the blocks' residual + layer norm
//! (`src/ops/residual_layer_norm.cu`), on every machine; `tests/cuda.rs` checks the real launches
//! against the CPU on a GPU.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); without one the test says so and passes, unless
//! `RDROP_REQUIRE_CXX=1`.

use std::path::Path;

/// Builds and runs `tests/emulated/<name>.cpp`, which prints `success` when every check passed.
fn emulated(name: &str, success: &str) {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    rdrop_kernels::emulate::run_emulated(
        &here.join(format!("tests/emulated/{name}.cpp")),
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("rdrop-seq2seq-{name}-emulated")),
        success,
    );
}

#[test]
fn top_k_kernel_matches_the_definition_under_emulation() {
    emulated("top_k", "all normalisers and top-k lists match");
}

#[test]
fn bias_act_kernels_match_the_definitions_under_emulation() {
    emulated("bias_act", "all values and gradients match");
}

#[test]
fn residual_layer_norm_kernel_matches_the_definition_under_emulation() {
    emulated("residual_layer_norm", "all rows match");
}
