// Shared by the build scripts of the crates with CUDA kernels (`include!`d, not a module): with the
// `cuda` feature, compiles a `.cu` file to PTX in OUT_DIR with the CUDA build's nvcc (`$NVCC`, else
// `$CUDA_HOME/bin/nvcc`, else `nvcc` on the path; see scripts/build-cuda.sh). CPU builds skip it.

/// Compiles `src` (relative to the crate) to `$OUT_DIR/<ptx>` when the `cuda` feature is on.
fn compile_ptx(src: &str, ptx: &str) {
    use std::path::PathBuf;
    println!("cargo::rerun-if-changed={src}");
    println!("cargo::rerun-if-changed=../kernels/cuda/emulate.hpp");
    println!("cargo::rerun-if-changed=../kernels/cuda/block_reduce.cuh");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    // PTX for the virtual architecture: the driver compiles it for the GPU at the first launch.
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join(ptx);
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("-o")
        .arg(&out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    assert!(status.success(), "{} failed on {src}", nvcc.display());
}
