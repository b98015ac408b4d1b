//! A Marian/BART-family encoder-decoder transformer for candle that trains (dropout, padding masks,
//! gradients to every parameter) and decodes (KV cache kept outside the weights).
//!
//! # Overview
//! - [`config::Config`]: a Hugging Face `config.json`, with transformers' `MarianConfig` defaults for
//!   absent keys; unknown keys are kept and written back.
//! - [`model::MarianModel`]: post-norm encoder-decoder with sinusoidal positions, `scale_embedding`,
//!   swish/gelu/gelu_new/relu, tied or untied embeddings, `final_logits_bias`, shared or separate
//!   encoder/decoder vocabularies. Its `VarBuilder` names are the Hugging Face keys. Every forward
//!   takes a [`Mode`]: `Mode::Eval`, or `Mode::Train(&rng)` to apply `dropout`, `attention_dropout`
//!   and `activation_dropout` exactly where transformers does, with masks from a seeded
//!   [`DropoutRng`] whose state can be saved and restored.
//! - [`cache::DecoderCache`]: the model's incremental decoding state (cross-attention K/V computed
//!   once per source, self-attention K/V growing per step; `select` reorders or drops rows for beam
//!   search).
//! - [`inference::InferenceModel`]: what [`MarianModel::freeze`] gives for decoding: detached
//!   weights kept transposed (and the output layer in panels) for the small matrix products of
//!   decoding on the CPU, and on the CPU in f32 a cache whose keys and values stay in host memory
//!   behind per-row tables, so reordering copies nothing. [`checkpoint::load_frozen`] loads one.
//! - [`checkpoint`]: find a model (directory, weights file, or hub id via hf-hub's cache, offline with
//!   `HF_HUB_OFFLINE=1`), load `model.safetensors` or zip `pytorch_model.bin`, and save
//!   `config.json` + `model.safetensors` that transformers loads with identical outputs.
//! - [`tokenizer`], [`generate`], [`device`]: Marian tokenizers, greedy/beam search, device parsing.
//!
//! # Example
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use rdrop_seq2seq::{checkpoint, DropoutRng, Mode};
//!
//! # fn main() -> rdrop_seq2seq::Result<()> {
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/models/opus");
//! let (cfg, model) = checkpoint::load(dir, DType::F32, &Device::Cpu)?;
//! let src = Tensor::new(&[[5u32, 9, 0], [7, 0, cfg.pad_token_id]], &Device::Cpu)?;
//! let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu)?;
//! let start = cfg.decoder_start_token_id;
//! let tgt_in = Tensor::new(&[[start, 4], [start, 6]], &Device::Cpu)?;
//!
//! // Teacher forcing, deterministic.
//! let logits = model.forward(&src, &mask, &tgt_in, Mode::Eval)?;
//! assert_eq!(logits.dims(), &[2, 2, cfg.target_vocab_size()]);
//!
//! // Training pass: dropout masks drawn from a seeded generator.
//! let rng = DropoutRng::new(1);
//! let _train_logits = model.forward(&src, &mask, &tgt_in, Mode::Train(&rng))?;
//!
//! // Incremental decoding: encode once, then one token per step.
//! let enc = model.encode(&src, &mask, Mode::Eval)?;
//! let mut cache = model.new_cache(&enc, &mask)?;
//! let next = model.decode_step(&Tensor::new(&[start, start], &Device::Cpu)?, &mut cache)?;
//! assert_eq!(next.dims(), &[2, cfg.target_vocab_size()]);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod dropout;
pub mod error;
pub mod generate;
mod host;
pub mod inference;
mod layers;
pub mod model;
pub mod ops;
pub mod tokenizer;

pub use cache::DecoderCache;
pub use config::{Activation, Config};
pub use dropout::{DropoutRng, Mode, RngState};
pub use error::{Error, Result};
pub use inference::{InferenceCache, InferenceModel};
pub use model::MarianModel;
