//! The model's fused ops, one file each with its forward and backward and one entry point
//! (`add_bias`, `add_bias_act`, `layer_norm`, `residual_layer_norm`, `softmax_last_dim`, `apply_keep_mask`, `single_query_attention`),
//! CPU kernels and, built with `cuda`, CUDA ones; and the attention softmax the layers share.
//!
//! candle's composed versions reduce the bias and norm-weight gradients over the batch rows, a
//! reduction over a leading dimension that candle's CPU backend does one element at a time with
//! index arithmetic; here those gradients are a matrix product (bias) or per-chunk sums (norm).
//! Other devices and dtypes use the composed ops, which the tests also use as the reference. The
//! plumbing the kernels share with rdrop-loss's is in the `rdrop-kernels` crate.

mod attention;
mod bias_act;
mod bias_add;
mod dropout;
mod layer_norm;
mod residual_layer_norm;
mod softmax;

use candle_core::{DType, Tensor, D};

pub(crate) use attention::attend_rows;
pub use attention::{single_query_attention, single_query_attention_composed};
pub use bias_act::{add_bias_act, add_bias_act_composed};
pub use bias_add::add_bias;
pub use dropout::apply_keep_mask;
pub use layer_norm::{layer_norm, layer_norm_composed};
pub use residual_layer_norm::residual_layer_norm;
pub use softmax::softmax_last_dim;

/// Tunes the CPU matrix product for decoding with frozen weights, process-wide (single-threaded
/// products): gemm copies the weight into its panel layout whenever more than 48 rows multiply it,
/// but frozen weights are stored transposed or in panels it reads well as they are. From 192 rows
/// on (the encoder's products) the copy still pays; beam search's steps of 128 rows ran 5% faster
/// without it (`scripts/bench_translate.sh`).
pub fn prefer_unpacked_weights() {
    gemm::set_lhs_packing_threshold_single_thread(32);
}

/// Attention weights: softmax over the last dimension of `scores` plus an optional additive
/// `mask` (broadcast). Half-precision scores are normalised in f32, as PyTorch's autocast does.
/// A gradient may flow through it: on CUDA [`softmax_last_dim`] is fused forward and keeps only
/// the probabilities for the backward.
pub fn attention_probs(scores: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores.clone(),
    };
    let dtype = scores.dtype();
    let scores = match dtype {
        DType::BF16 | DType::F16 => scores.to_dtype(DType::F32)?,
        _ => scores,
    };
    // On the CPU, training keeps the composed softmax: the fused one measured no faster there
    // (scripts/bench_ab.sh); on CUDA it saves the composed ops' intermediates.
    let probs = if rdrop_kernels::available_cuda(&scores) {
        softmax_last_dim(&scores)?
    } else if scores.track_op() {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    probs.to_dtype(dtype)
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Random inputs, a tolerance check and the gradients of every input, for testing the kernels
    //! against the composed ops.
    use candle_core::{Device, Tensor, Var};

    pub(crate) fn random(shape: &[usize], seed: u64) -> Var {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
            })
            .collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub(crate) fn close(what: &str, a: &Tensor, b: &Tensor) {
        let a = a.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-10 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Loss = Σ y ⊙ r for a fixed random r, so every output element gets a distinct gradient.
    pub(crate) fn grads(y: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
        let r = random(y.dims(), 99);
        let g = (y * r.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        vars.iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect()
    }
}
