//! The loss's CUDA kernels (`src/fused.cu`) run on the host under a small emulator
//! (`crates/kernels/cuda/emulate.hpp`), against a double-precision reference written from the
//! definitions and finite differences of it (`tests/emulated/fused_loss.cpp`). So the kernels'
//! logic (indexing, block reductions, the gradient formulas) is checked on every machine, not only
//! where a GPU is; `tests/cuda.rs` checks the real launches against the CPU on a GPU.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); without one the test says so and passes, unless
//! `RDROP_REQUIRE_CXX=1`.

use std::path::Path;

#[test]
fn fused_loss_kernels_match_reference_under_emulation() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    rdrop_kernels::emulate::run_emulated(
        &here.join("tests/emulated/fused_loss.cpp"),
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("rdrop-loss-fused-emulated"),
        "all statistics and gradients match",
    );
}
