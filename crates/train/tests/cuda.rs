//! The optimiser on a CUDA GPU gives the CPU's parameters and moments.
//!
//! The CPU update is checked against torch.optim.AdamW (`optim` unit tests) and its fused passes
//! bit for bit against the composed ops; here it is the reference for the CUDA kernels
//! (`src/optim/fused.cu`). Without a GPU (or in a build without the `cuda` feature) the test
//! prints why and passes, unless `RDROP_REQUIRE_CUDA=1` (set by scripts/gpu-check.sh).

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use rdrop_seq2seq::device::cuda_for_test;
use rdrop_train::optim::{AdamW, Grads};
use rdrop_train::recipe::OptimizerSection;

fn gpu(test: &str) -> Option<Device> {
    cuda_for_test(test)
}

fn wave(n: usize, k: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (k * i as f32).sin() * 10f32.powi((i % 5) as i32 - 3))
        .collect()
}

/// Three AdamW steps on `dev` over a decayed weight and an undecayed bias (names decide).
fn run(dev: &Device) -> Vec<(String, Vec<f32>)> {
    let shapes = [("layer.weight", 5000), ("layer.bias", 257)];
    let vars: HashMap<String, Var> = shapes
        .iter()
        .map(|&(name, n)| {
            let t = Tensor::from_vec(wave(n, 0.37), n, dev).unwrap();
            (name.to_string(), Var::from_tensor(&t).unwrap())
        })
        .collect();
    let cfg = OptimizerSection {
        lr: 1e-3,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = AdamW::new(&vars, &cfg).unwrap();
    for k in 0..3 {
        let grads = opt
            .names()
            .iter()
            .map(|n| {
                let len = vars[*n].as_tensor().elem_count();
                Some(Tensor::from_vec(wave(len, 0.7 + k as f32), len, dev).unwrap())
            })
            .collect();
        opt.step(&Grads(grads), 1e-3 * (k + 1) as f64).unwrap();
    }
    let mut out: Vec<(String, Vec<f32>)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn adamw_on_cuda_matches_the_cpu() {
    let Some(dev) = gpu("adamw_on_cuda_matches_the_cpu") else {
        return;
    };
    for ((name, cpu), (_, cuda)) in run(&Device::Cpu).iter().zip(run(&dev)) {
        for (i, (a, b)) in cpu.iter().zip(&cuda).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1e-3),
                "{name}[{i}]: cpu {a} vs cuda {b}"
            );
        }
    }
}
