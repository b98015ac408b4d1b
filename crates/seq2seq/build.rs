//! With the `cuda` feature, compiles the model's CUDA kernels (`src/ops/*.cu`, `src/generate/top_k.cu`) to PTX.

include!("../kernels/build_ptx.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    compile_ptx("src/ops/dropout.cu", "dropout.ptx");
    compile_ptx("src/generate/top_k.cu", "top_k.ptx");
}
