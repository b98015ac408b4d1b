//! Seeded initialisation of a from-scratch model, following transformers' `MarianPreTrainedModel._init_weights`:
//! weight matrices and embeddings normal(0, init_std) (the pad row of embeddings zero), biases 0,
//! layer norms weight 1 / bias 0. Sinusoidal position tables are left as the model built them.

use crate::error::Result;
use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// How one parameter is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitKind {
    /// Normal(0, `init_std`) (weight matrices).
    Normal,
    /// Normal, with the pad row set to zero (token embeddings).
    Embedding,
    /// Zero (biases, layer-norm biases).
    Zeros,
    /// One (layer-norm weights).
    Ones,
    /// Computed by the model (sinusoidal positions): left alone.
    Keep,
}

/// The rule for a HF Marian parameter name.
pub fn init_kind(name: &str) -> InitKind {
    if name.contains("embed_positions") {
        InitKind::Keep
    } else if name.contains("layer_norm") || name.contains("layernorm") {
        if name.ends_with(".weight") {
            InitKind::Ones
        } else {
            InitKind::Zeros
        }
    } else if name.ends_with(".bias") || name.ends_with("_bias") {
        InitKind::Zeros
    } else if name.ends_with("shared.weight") || name.ends_with("embed_tokens.weight") {
        InitKind::Embedding
    } else {
        InitKind::Normal
    }
}

/// Standard normal samples by Box–Muller from a seeded ChaCha stream (reproducible everywhere,
/// unlike candle's thread RNG).
fn normals(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]: ln is finite
        let u2: f64 = rng.gen();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let th = 2.0 * std::f64::consts::PI * u2;
        out.push((r * th.cos()) as f32);
        out.push((r * th.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Overwrites every variable with its seeded initial value. Variables are visited in name order
/// and each gets its own ChaCha stream, so the result does not depend on map order.
pub fn init_marian(
    vars: &HashMap<String, Var>,
    init_std: f64,
    pad_id: u32,
    seed: u64,
) -> Result<()> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &vars[name];
        let t = var.as_tensor();
        let (shape, dtype, device) = (t.shape().clone(), t.dtype(), t.device().clone());
        let value = match init_kind(name) {
            InitKind::Keep => continue,
            InitKind::Zeros => t.zeros_like()?,
            InitKind::Ones => t.ones_like()?,
            k @ (InitKind::Normal | InitKind::Embedding) => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(i as u64 + 1);
                let mut v = normals(&mut rng, shape.elem_count(), init_std);
                if k == InitKind::Embedding && shape.rank() == 2 {
                    let cols = shape.dims()[1];
                    let row = pad_id as usize;
                    if row < shape.dims()[0] {
                        v[row * cols..(row + 1) * cols].fill(0.0);
                    }
                }
                Tensor::from_vec(v, shape, &device)?.to_dtype(dtype)?
            }
        };
        var.set(&value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rules_by_name() {
        assert_eq!(
            init_kind("model.encoder.layers.0.self_attn.q_proj.weight"),
            InitKind::Normal
        );
        assert_eq!(
            init_kind("model.encoder.layers.0.self_attn.q_proj.bias"),
            InitKind::Zeros
        );
        assert_eq!(
            init_kind("model.decoder.layers.0.final_layer_norm.weight"),
            InitKind::Ones
        );
        assert_eq!(
            init_kind("model.decoder.layers.0.final_layer_norm.bias"),
            InitKind::Zeros
        );
        assert_eq!(init_kind("final_logits_bias"), InitKind::Zeros);
        assert_eq!(init_kind("model.shared.weight"), InitKind::Embedding);
        assert_eq!(
            init_kind("model.encoder.embed_positions.weight"),
            InitKind::Keep
        );
    }

    #[test]
    fn seeded_normal_with_zero_pad_row() {
        let mk = || {
            let mut m = HashMap::new();
            m.insert(
                "model.shared.weight".to_string(),
                Var::zeros((50, 40), candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
            m.insert(
                "x.bias".to_string(),
                Var::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
            );
            m
        };
        let (a, b) = (mk(), mk());
        init_marian(&a, 0.02, 49, 3).unwrap();
        init_marian(&b, 0.02, 49, 3).unwrap();
        let w = a["model.shared.weight"]
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(
            w,
            b["model.shared.weight"]
                .as_tensor()
                .to_vec2::<f32>()
                .unwrap()
        );
        assert!(w[49].iter().all(|&x| x == 0.0));
        let flat: Vec<f64> = w[..49].iter().flatten().map(|&x| x as f64).collect();
        let mean = flat.iter().sum::<f64>() / flat.len() as f64;
        let std = (flat.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / flat.len() as f64).sqrt();
        assert!(
            mean.abs() < 0.002 && (std - 0.02).abs() < 0.001,
            "mean {mean} std {std}"
        );
        assert_eq!(
            a["x.bias"].as_tensor().to_vec1::<f32>().unwrap(),
            vec![0.0; 4]
        );
    }
}
