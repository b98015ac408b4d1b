//! With the `cuda` feature, compiles the model's CUDA kernels (`src/ops/*.cu`, `src/generate/top_k.cu`) to PTX.

include!("../kernels/build_ptx.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    compile_ptx("src/ops/bias_act.cu", "bias_act.ptx");
    compile_ptx("src/ops/dropout.cu", "dropout.ptx");
    compile_ptx("src/ops/residual_layer_norm.cu", "residual_layer_norm.ptx");
    compile_ptx("src/generate/top_k.cu", "top_k.ptx");
}
