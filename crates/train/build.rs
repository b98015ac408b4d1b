//! With the `cuda` feature, compiles the optimiser's CUDA kernels (`src/optim/fused.cu`) to PTX.

include!("../kernels/build_ptx.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    compile_ptx("src/optim/fused.cu", "adamw.ptx");
}
