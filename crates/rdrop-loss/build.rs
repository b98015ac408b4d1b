//! With the `cuda` feature, compiles the loss's CUDA kernels (`src/fused.cu`) to PTX.

include!("../kernels/build_ptx.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    compile_ptx("src/fused.cu", "fused.ptx");
}
