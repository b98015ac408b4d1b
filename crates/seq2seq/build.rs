//! With the `cuda` feature, compiles the model's CUDA kernels (`src/ops/*.cu`) to PTX.

include!("../kernels/build_ptx.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    compile_ptx("src/ops/dropout.cu", "dropout.ptx");
}
