//! The loss's CUDA kernels (`src/fused.cu`) run on the host under a small emulator
//! (`crates/kernels/cuda/emulate.hpp`), against a double-precision reference written from the
//! definitions and finite differences of it (`tests/emulated/fused_loss.cpp`). So the kernels'
//! logic (indexing, block reductions, the gradient formulas) is checked on every machine, not only
//! where a GPU is; `tests/cuda.rs` checks the real launches against the CPU on a GPU.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); without one the test says so and passes, unless
//! `RDROP_REQUIRE_CXX=1`.

use std::path::Path;
use std::process::Command;

#[test]
fn fused_loss_kernels_match_reference_under_emulation() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rdrop-loss-fused-emulated");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let build = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-o"])
        .arg(&exe)
        .arg(here.join("tests/emulated/fused_loss.cpp"))
        .output();
    let build = match build {
        Ok(out) => out,
        Err(e) => {
            if std::env::var("RDROP_REQUIRE_CXX").is_ok_and(|v| v == "1") {
                panic!("RDROP_REQUIRE_CXX=1 but {cxx} cannot run: {e}");
            }
            eprintln!("skipping: no C++ compiler to emulate the CUDA kernels ({cxx}: {e})");
            return;
        }
    };
    assert!(
        build.status.success(),
        "{cxx} failed on the emulated kernels:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .expect("run the emulated kernels");
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "emulated CUDA kernels:\n{report}");
    assert!(
        report.contains("all statistics and gradients match"),
        "{report}"
    );
}
