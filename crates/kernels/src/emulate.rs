//! Runs a crate's CUDA kernels on the host under `cuda/emulate.hpp`, for its tests: builds a C++
//! test program (which `#include`s the `.cu` files and checks them against a reference) and runs it.

use std::path::Path;
use std::process::Command;

/// Builds `source` (a C++20 program) into `exe` with `$CXX` (else `c++`) and runs it; panics when
/// the build or the program fails, or its output lacks `success` (the line it prints when every
/// check passed). Without a C++ compiler it says so on stderr and returns, unless
/// `RDROP_REQUIRE_CXX=1`.
pub fn run_emulated(source: &Path, exe: &Path, success: &str) {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let build = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-o"])
        .arg(exe)
        .arg(source)
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
        "{cxx} failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "emulated CUDA kernels:\n{report}");
    assert!(report.contains(success), "{report}");
}
