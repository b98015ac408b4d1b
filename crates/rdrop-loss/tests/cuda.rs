//! The criteria on a CUDA GPU give the CPU's loss and gradients.
//!
//! The CPU path is checked against PyTorch in `loss.rs`; here it is the reference for CUDA, where
//! f32 logits take the fused kernels of `src/fused.cu` (their logic is also checked without a GPU,
//! in `cuda_emulated.rs`), or the composed candle ops under `RDROP_CUDA_KERNELS=0`.
//! Without a GPU (or in a build without the `cuda` feature) each test prints why and passes, unless
//! `RDROP_REQUIRE_CUDA=1` (set by scripts/gpu-check.sh) turns the skip into a failure.

use candle_core::{DType, Device, Tensor, Var};
use rdrop_loss::{label_smoothed_ce, rdrop_loss};

fn cuda_or_skip(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            let why = e.to_string();
            let why = why.lines().next().unwrap_or("");
            if std::env::var("RDROP_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("{test}: RDROP_REQUIRE_CUDA=1 but no usable GPU: {why}");
            }
            eprintln!("skipping {test}: no usable CUDA GPU ({why})");
            None
        }
    }
}

/// Deterministic logits with a wide range (so log-softmax's max shift matters) and padded targets.
fn inputs(rows: usize, t: usize, v: usize, pad: u32) -> (Vec<f32>, Vec<u32>) {
    let logits = (0..rows * t * v)
        .map(|i| {
            let x = i as f32;
            4.0 * (0.37 * x).sin() + 2.0 * (0.011 * x).cos()
        })
        .collect();
    let b = rows / 2;
    let target = (0..b * t)
        .map(|i| {
            let (row, pos) = (i / t, i % t);
            if pos >= t - row {
                pad
            } else {
                ((i * 7 + 3) % v) as u32
            }
        })
        .collect();
    (logits, target)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Loss and d loss / d logits for R-Drop (`rdrop = true`) or plain label-smoothed CE.
fn loss_and_grad(
    dev: &Device,
    dtype: DType,
    rdrop: bool,
    logits: &[f32],
    target: &[u32],
    dims: (usize, usize, usize),
    pad: u32,
) -> (f32, Tensor) {
    let (rows, t, v) = dims;
    let x = Tensor::from_slice(logits, (rows, t, v), dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let tgt = Tensor::from_slice(target, (rows / 2, t), dev).unwrap();
    let parts = if rdrop {
        rdrop_loss(x.as_tensor(), &tgt, pad, 0.1, 5.0).unwrap()
    } else {
        let tgt2 = Tensor::cat(&[&tgt, &tgt], 0).unwrap();
        label_smoothed_ce(x.as_tensor(), &tgt2, pad, 0.1).unwrap()
    };
    let grads = parts.loss.backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap().clone();
    let loss = parts
        .loss
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (loss, g)
}

#[test]
fn rdrop_and_ce_match_cpu_in_f32() {
    let Some(gpu) = cuda_or_skip("rdrop_and_ce_match_cpu_in_f32") else {
        return;
    };
    // A vocabulary below the kernels' 256 threads per row, one not a multiple of it, and one the
    // size of a real model's.
    for (dims, pad) in [((6, 7, 301), 300), ((4, 3, 97), 0), ((2, 5, 58101), 58100)] {
        rdrop_and_ce_match(&gpu, dims, pad);
    }
}

fn rdrop_and_ce_match(gpu: &Device, dims: (usize, usize, usize), pad: u32) {
    let (logits, target) = inputs(dims.0, dims.1, dims.2, pad);
    for rdrop in [true, false] {
        let (l_cpu, g_cpu) =
            loss_and_grad(&Device::Cpu, DType::F32, rdrop, &logits, &target, dims, pad);
        let (l_gpu, g_gpu) = loss_and_grad(gpu, DType::F32, rdrop, &logits, &target, dims, pad);
        assert!(
            (l_cpu - l_gpu).abs() <= 1e-4 * l_cpu.abs().max(1.0),
            "{dims:?} rdrop={rdrop}: loss cpu {l_cpu} vs cuda {l_gpu}"
        );
        let d = max_abs_diff(&g_cpu, &g_gpu);
        assert!(d <= 1e-5, "{dims:?} rdrop={rdrop}: gradient differs by {d}");
    }
}

/// bf16 logits (what bf16 autocast hands the criterion) are computed in f32 inside it: the loss must
/// stay within bf16's rounding of the inputs, and the gradient must come back as bf16.
#[test]
fn rdrop_accepts_bf16_logits_on_cuda() {
    let Some(gpu) = cuda_or_skip("rdrop_accepts_bf16_logits_on_cuda") else {
        return;
    };
    let dims = (4, 5, 257);
    let pad = 0;
    let (logits, target) = inputs(dims.0, dims.1, dims.2, pad);
    let (l32, _) = loss_and_grad(&Device::Cpu, DType::F32, true, &logits, &target, dims, pad);
    let (l16, g16) = loss_and_grad(&gpu, DType::BF16, true, &logits, &target, dims, pad);
    assert_eq!(g16.dtype(), DType::BF16);
    // bf16 keeps 8 bits of mantissa: logits up to ~6 move by up to ~0.02.
    assert!(
        (l32 - l16).abs() <= 0.05 * l32.abs().max(1.0),
        "f32 cpu {l32} vs bf16 cuda {l16}"
    );
}
