//! R-Drop and label-smoothed cross-entropy training criteria for any candle sequence model.
//! Token-level, padding-aware, normalised like fairseq, with every part of the loss returned.
//!
//! # Overview
//!
//! R-Drop (Liang et al., 2021) runs each batch through the model twice with independent dropout
//! masks and adds a symmetric KL term that makes the two predictions agree. Here that is done
//! with ONE forward pass over a doubled batch:
//!
//! 1. [`duplicate_all`] stacks every input tensor on itself as blocks `[x; x]` along the batch
//!    axis (source ids, masks, decoder inputs); the caller's tensors stay untouched.
//! 2. The model produces logits `[2B, T, V]`; rows `0..B` are copy 1, rows `B..2B` copy 2
//!    ([`split_halves`]).
//! 3. [`rdrop_loss`] (or a [`Criterion`] built from [`CriterionConfig`]) takes those logits and
//!    the ORIGINAL `[B, T]` target and returns [`LossParts`].
//!
//! Per non-pad target token the loss is `CE(P1) + CE(P2) + α/2 · (KL(P1‖P2) + KL(P2‖P1))`,
//! with label-smoothed CE as in upstream fairseq (`1 − ε` on the gold token, `ε/(V−1)` on each
//! other token) and the KL summed over the vocabulary. Padding contributes nothing; no side is
//! detached; half-precision logits are computed in f32.
//!
//! **Normalisation.** `LossParts::loss` is `loss_sum / ntokens`, where `ntokens` is the number of
//! non-pad tokens of the original (un-duplicated) target, as in fairseq and the official R-Drop
//! code; it is what you call `backward` on. The R-Drop loss therefore sums the CE of two copies
//! and reads about twice a baseline's: log [`LossValues::ce`] (per copy, per token) to compare
//! curves with a baseline.
//!
//! With `α = 0`, R-Drop's `loss_sum` equals the label-smoothed CE `loss_sum` of the doubled
//! batch with the doubled target; its `loss` is twice that CE's `loss`, because the plain
//! criterion divides by its own (doubled) token count.
//!
//! # Example: a toy model trained with R-Drop
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{Optimizer, VarBuilder, VarMap};
//! use rdrop_loss::{duplicate_all, CriterionConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let (vocab, hidden, pad) = (12, 32, 0u32);
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
//! let embed = candle_nn::embedding(vocab, hidden, vb.pp("embed"))?;
//! let project = candle_nn::linear(hidden, vocab, vb.pp("project"))?;
//!
//! // Toy task: predict each source token plus one. The last sentence is padded.
//! let src = Tensor::new(&[[3u32, 4, 5, 6], [7, 8, 9, 10], [2, 3, 0, 0]], &dev)?;
//! let tgt = Tensor::new(&[[4u32, 5, 6, 7], [8, 9, 10, 11], [3, 4, 0, 0]], &dev)?;
//!
//! let criterion = CriterionConfig::RDrop { eps: 0.1, alpha: 5.0 }.build(pad)?;
//! let mut opt = candle_nn::SGD::new(varmap.all_vars(), 0.5)?;
//! let mut losses = Vec::new();
//! for step in 0..40 {
//!     // One forward pass over [src; src]: dropout draws different masks for the two copies.
//!     let input = if criterion.needs_doubled_batch() {
//!         duplicate_all(&[&src])?.remove(0)
//!     } else {
//!         src.clone()
//!     };
//!     let hidden_states = candle_nn::ops::dropout(&embed.forward(&input)?, 0.3)?;
//!     let logits = project.forward(&hidden_states)?; // [2B, T, V]
//!     let parts = criterion.loss(&logits, &tgt)?; // the ORIGINAL [B, T] target
//!     opt.backward_step(&parts.loss)?;
//!     let v = parts.values()?;
//!     if step % 10 == 0 {
//!         println!("step {step}: loss {:.3}, CE per copy {:?}, KL {:?}, tokens {}",
//!                  v.loss, v.ce, v.kl, v.ntokens);
//!     }
//!     losses.push(v.loss);
//! }
//! let first = losses[0];
//! let last = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
//! // Typically ~9 -> ~2 (CE of both copies plus 5 x KL, per token); dropout noise stays well below this.
//! assert!(last < 0.7 * first, "loss should fall: {first} -> {last}");
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

mod batch;
mod criterion;
mod error;
mod fused;
mod loss;
mod metrics;

pub use batch::{duplicate, duplicate_all, split_halves};
pub use criterion::{Criterion, CriterionConfig, LabelSmoothedCe, RDrop};
pub use error::{LossError, Result};
pub use loss::{
    label_smoothed_ce, label_smoothed_nll_loss, rdrop_loss, LossParts, LossValues, SmoothedNll,
};
pub use metrics::{LossMeans, LossSums};
