//! Times `x·Wᵀ` with the weight as stored (`[out, in]`, transposed view) against a pre-transposed
//! contiguous `[in, out]` copy, on the shapes of decoding a d_model 256 / ffn 1024 / vocab 8000
//! model with 32 and 128 rows: why frozen CPU weights are kept transposed (see `layers::Linear`).
//!
//!     RAYON_NUM_THREADS=1 cargo run --release -p rdrop-seq2seq --example matmul_layouts
use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "{:>16} {:>14} {:>14}",
        "rows x in x out", "x.W^T (us)", "x.Wt (us)"
    );
    for (m, k, n) in [
        (32, 256, 256),
        (32, 256, 1024),
        (32, 1024, 256),
        (32, 256, 8000),
        (128, 256, 256),
        (128, 256, 8000),
    ] {
        let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let wt = w.t()?.contiguous()?;
        let mut best = [f64::MAX; 2];
        for _ in 0..200 {
            for (i, slot) in best.iter_mut().enumerate() {
                let t0 = Instant::now();
                let _ = if i == 0 {
                    x.matmul(&w.t()?)?
                } else {
                    x.matmul(&wt)?
                };
                *slot = slot.min(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        println!(
            "{:>16} {:>14.1} {:>14.1}",
            format!("{m}x{k}x{n}"),
            best[0],
            best[1]
        );
    }
    Ok(())
}
