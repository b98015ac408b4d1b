//! `MarianModel`: the post-norm encoder-decoder of transformers' `MarianMTModel` (modeling_marian.py),
//! for training and evaluation, with `past_key_values`-style incremental decoding on [`DecoderCache`].
//!
//! Parameter names passed to the `VarBuilder` are exactly the Hugging Face state-dict keys. The
//! blocks are in `layers.rs`; [`MarianModel::freeze`] gives the [`InferenceModel`] that
//! translation runs on.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::cache::DecoderCache;
use crate::config::Config;
use crate::dropout::Mode;
use crate::error::{Error, Result};
use crate::inference::InferenceModel;
use crate::layers::mask_value;
pub use crate::layers::{DecoderLayer, EncoderLayer};
use crate::ops;

/// Sinusoidal positions as transformers' `MarianSinusoidalPositionalEmbedding` computes them: sin in
/// the first ceil(d/2) columns, cos in the rest, computed in f64 like its numpy code.
fn sinusoids(n_pos: usize, dim: usize) -> Vec<f32> {
    let sentinel = dim.div_ceil(2);
    let mut out = vec![0f32; n_pos * dim];
    for pos in 0..n_pos {
        let row = &mut out[pos * dim..(pos + 1) * dim];
        for (j, slot) in row.iter_mut().enumerate() {
            // Column j < sentinel holds feature 2j (sin), column sentinel + i holds feature 2i + 1 (cos);
            // feature f has frequency 10000^(-2·(f/2)/dim).
            let (i, use_sin) = if j < sentinel {
                (j, true)
            } else {
                (j - sentinel, false)
            };
            let angle = pos as f64 / 10000f64.powf((2 * i) as f64 / dim as f64);
            *slot = if use_sin { angle.sin() } else { angle.cos() } as f32;
        }
    }
    out
}

/// The Marian encoder-decoder with its output layer (transformers' `MarianMTModel`).
#[derive(Debug, Clone)]
pub struct MarianModel {
    cfg: Config,
    encoder_embed: Tensor,
    decoder_embed: Tensor,
    lm_head: Tensor,
    final_logits_bias: Tensor,
    encoder_layers: Vec<EncoderLayer>,
    decoder_layers: Vec<DecoderLayer>,
    positions: Tensor,
    embed_scale: f64,
    device: Device,
    dtype: DType,
}

impl MarianModel {
    /// Builds the model; `vb` names are the Hugging Face keys (`model.shared.weight`,
    /// `model.encoder.layers.0.self_attn.q_proj.weight`, `lm_head.weight`, `final_logits_bias`, ...).
    /// Tied weights are fetched once, so a `VarMap` holds one `Var` for them.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate(std::path::Path::new("<config>"))?;
        let d = cfg.d_model;
        let target = cfg.target_vocab_size();
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: cfg.init_std,
        };
        let (encoder_embed, decoder_embed) =
            if cfg.share_encoder_decoder_embeddings && cfg.tie_word_embeddings {
                let shared = vb.get_with_hints((cfg.vocab_size, d), "model.shared.weight", init)?;
                (shared.clone(), shared)
            } else {
                // transformers 5 unties everything when tie_word_embeddings is false, even with shared
                // encoder/decoder embeddings: each side reads its own matrix.
                (
                    vb.get_with_hints(
                        (cfg.vocab_size, d),
                        "model.encoder.embed_tokens.weight",
                        init,
                    )?,
                    vb.get_with_hints(
                        (cfg.decoder_vocab_size, d),
                        "model.decoder.embed_tokens.weight",
                        init,
                    )?,
                )
            };
        let lm_head = if cfg.tie_word_embeddings {
            decoder_embed.clone()
        } else {
            vb.get_with_hints((target, d), "lm_head.weight", init)?
        };
        let final_logits_bias = vb.get_with_hints(
            (1, target),
            "final_logits_bias",
            candle_nn::Init::Const(0.0),
        )?;
        let encoder_layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::new(cfg, vb.pp(format!("model.encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let decoder_layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::new(cfg, vb.pp(format!("model.decoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let positions = Tensor::from_vec(
            sinusoids(cfg.max_position_embeddings, d),
            (cfg.max_position_embeddings, d),
            &device,
        )?
        .to_dtype(dtype)?;
        Ok(MarianModel {
            cfg: cfg.clone(),
            encoder_embed,
            decoder_embed,
            lm_head,
            final_logits_bias,
            encoder_layers,
            decoder_layers,
            positions,
            embed_scale: if cfg.scale_embedding {
                (d as f64).sqrt()
            } else {
                1.0
            },
            device,
            dtype,
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The inference model on the weights' current values: detached, laid out for decoding, with
    /// the host-memory KV cache on the CPU. Training keeps using `self`. The weights that keep
    /// their layout (embeddings, norms, biases; every weight off the CPU) share memory with `self`,
    /// so an optimiser step updating them in place would show through those but not through the
    /// transposed copies: freeze again after training.
    pub fn freeze(&self) -> Result<InferenceModel> {
        InferenceModel::new(self)
    }

    /// A copy that nothing trains: every weight detached, the dense layers' laid out for decoding
    /// (see `layers.rs`). The inference model's architecture.
    pub(crate) fn frozen(&self) -> Result<MarianModel> {
        Ok(MarianModel {
            cfg: self.cfg.clone(),
            encoder_embed: self.encoder_embed.detach(),
            decoder_embed: self.decoder_embed.detach(),
            lm_head: self.lm_head.detach(),
            final_logits_bias: self.final_logits_bias.detach(),
            encoder_layers: self
                .encoder_layers
                .iter()
                .map(EncoderLayer::frozen)
                .collect::<Result<_>>()?,
            decoder_layers: self
                .decoder_layers
                .iter()
                .map(DecoderLayer::frozen)
                .collect::<Result<_>>()?,
            positions: self.positions.detach(),
            embed_scale: self.embed_scale,
            device: self.device.clone(),
            dtype: self.dtype,
        })
    }

    /// The decoder layers, for the inference model's own step.
    pub(crate) fn decoder_layers(&self) -> &[DecoderLayer] {
        &self.decoder_layers
    }

    /// The output layer's weights: `lm_head` `[V, D]` and `final_logits_bias` `[1, V]`.
    pub(crate) fn output_weights(&self) -> (&Tensor, &Tensor) {
        (&self.lm_head, &self.final_logits_bias)
    }

    /// Token embeddings (scaled) plus positions `start..start + T`, for ids `[B, T]`.
    fn embed(&self, table: &Tensor, ids: &Tensor, start: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if start + t > self.cfg.max_position_embeddings {
            return Err(Error::TooLong {
                len: start + t,
                max: self.cfg.max_position_embeddings,
            });
        }
        let ids = ids.to_dtype(DType::U32)?.flatten_all()?;
        let mut x = table.index_select(&ids, 0)?;
        let pad = self.cfg.pad_token_id as usize;
        if table.is_variable() && pad < table.dim(0)? {
            // PyTorch's nn.Embedding(padding_idx=pad) gives the pad row no gradient from lookups (it is
            // also Marian's decoder start token): take those rows from a detached copy.
            let is_pad = ids
                .eq(self.cfg.pad_token_id)?
                .unsqueeze(1)?
                .broadcast_as(x.shape())?;
            let frozen = table.narrow(0, pad, 1)?.detach().broadcast_as(x.shape())?;
            x = is_pad.where_cond(&frozen, &x)?;
        }
        let x = x.reshape((b, t, self.cfg.d_model))?;
        let x = if self.embed_scale != 1.0 {
            (x * self.embed_scale)?
        } else {
            x
        };
        Ok(x.broadcast_add(&self.positions.narrow(0, start, t)?)?)
    }

    /// Source padding mask `[B, S]` (1 = token, 0 = pad, any dtype) as an additive `[B, 1, 1, S]` mask.
    fn padding_mask(&self, src_mask: &Tensor, batch: usize, len: usize) -> Result<Tensor> {
        let dims = src_mask.dims();
        if dims != [batch, len] {
            return Err(Error::Input(format!(
                "source mask has shape {dims:?}, the source ids [{batch}, {len}]"
            )));
        }
        let neg = mask_value(self.dtype);
        // mask·(-neg) + neg: 0 where mask is 1, neg where it is 0.
        let m = src_mask
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .affine(-neg, neg)?;
        Ok(m.reshape((batch, 1, 1, len))?)
    }

    /// Additive causal mask `[T, T]`: position t sees positions 0..=t.
    fn causal_mask(&self, t: usize) -> Result<Tensor> {
        let neg = mask_value(self.dtype) as f32;
        let values: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { neg } else { 0.0 }))
            .collect();
        Ok(Tensor::from_vec(values, (t, t), &self.device)?.to_dtype(self.dtype)?)
    }

    fn check_ids(&self, ids: &Tensor, what: &str) -> Result<(usize, usize)> {
        let (b, t) = ids.dims2().map_err(|_| {
            Error::Input(format!(
                "{what} must be [batch, length], got {:?}",
                ids.dims()
            ))
        })?;
        if b == 0 || t == 0 {
            return Err(Error::Input(format!(
                "{what} is empty: shape {:?}",
                ids.dims()
            )));
        }
        if !matches!(ids.dtype(), DType::U32 | DType::U8 | DType::I64) {
            return Err(Error::Input(format!(
                "{what} must hold integer ids, got {:?}",
                ids.dtype()
            )));
        }
        Ok((b, t))
    }

    /// Whether layer drop skips a layer now (train mode only, as in transformers).
    fn skip_layer(mode: Mode, p: f64) -> bool {
        match mode {
            Mode::Train(rng) if p > 0.0 => rng.uniform() < p,
            _ => false,
        }
    }

    /// Encoder: `src_ids` `[B, S]` (u32), `src_mask` `[B, S]` (1 = token, 0 = pad) -> `[B, S, D]`.
    pub fn encode(&self, src_ids: &Tensor, src_mask: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, s) = self.check_ids(src_ids, "source ids")?;
        let mask = self.padding_mask(src_mask, b, s)?;
        let x = self.embed(&self.encoder_embed, &src_ids.to_device(&self.device)?, 0)?;
        let mut x = mode.dropout(&x, self.cfg.dropout)?;
        for layer in &self.encoder_layers {
            if Self::skip_layer(mode, self.cfg.encoder_layerdrop) {
                continue;
            }
            x = layer.forward(&x, &mask, mode)?;
        }
        Ok(x)
    }

    /// Decoder final hidden states for teacher forcing: `tgt_in` `[B, T]` -> `[B, T, D]`.
    pub fn decode_hidden(
        &self,
        tgt_in: &Tensor,
        enc: &Tensor,
        src_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t) = self.check_ids(tgt_in, "decoder inputs")?;
        let (eb, s, _) = enc.dims3()?;
        if eb != b {
            return Err(Error::Input(format!(
                "decoder inputs have {b} rows, the encoder output {eb}"
            )));
        }
        let cross_mask = self.padding_mask(src_mask, b, s)?;
        let causal = self.causal_mask(t)?;
        let x = self.embed(&self.decoder_embed, &tgt_in.to_device(&self.device)?, 0)?;
        let mut x = mode.dropout(&x, self.cfg.dropout)?;
        for layer in &self.decoder_layers {
            if Self::skip_layer(mode, self.cfg.decoder_layerdrop) {
                continue;
            }
            x = layer.forward(&x, &causal, enc, &cross_mask, mode)?;
        }
        Ok(x)
    }

    /// Output layer: hidden `[..., D]` -> logits `[..., V]` (tied or own `lm_head`, plus
    /// `final_logits_bias`).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let d = self.cfg.d_model;
        let rows = hidden.elem_count() / d;
        let flat = hidden.reshape((rows, d))?.matmul(&self.lm_head.t()?)?;
        // A buffer in transformers, never trained: detached, so no gradient is summed for it.
        let bias = self.final_logits_bias.detach().flatten_all()?;
        let flat = ops::add_bias(&flat, &bias)?;
        Ok(flat.reshape(dims_with_last(&dims, self.lm_head.dim(0)?))?)
    }
    /// Teacher forcing: `tgt_in` `[B, T]` (decoder start + target[..-1]) -> logits `[B, T, V]`.
    /// Target padding needs no mask: with right padding, causal attention keeps pads out of every
    /// real position (as in transformers when no decoder mask is passed).
    pub fn decode(
        &self,
        tgt_in: &Tensor,
        enc: &Tensor,
        src_mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        self.logits(&self.decode_hidden(tgt_in, enc, src_mask, mode)?)
    }

    /// Encoder and decoder in one call: logits `[B, T, V]`.
    pub fn forward(
        &self,
        src_ids: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let enc = self.encode(src_ids, src_mask, mode)?;
        self.decode(tgt_in, &enc, src_mask, mode)
    }

    /// Starts incremental decoding (eval mode) for the encoder output `enc` `[B, S, D]`: the
    /// cross-attention keys and values of every layer are computed here, once.
    pub fn new_cache(&self, enc: &Tensor, src_mask: &Tensor) -> Result<DecoderCache> {
        let (b, s, _) = enc.dims3()?;
        let cross_mask = self.padding_mask(src_mask, b, s)?;
        let cross_kv = self
            .decoder_layers
            .iter()
            .map(|l| l.encoder_attn.key_values(enc))
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderCache::new(cross_kv, cross_mask))
    }

    /// One decoding step (eval mode): `tokens` `[B]` (the last token of each row; the decoder start
    /// token first) -> logits `[B, V]` for the next position. Appends this step's keys/values to `cache`.
    pub fn decode_step(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        self.logits(&self.decode_step_hidden(tokens, cache)?.squeeze(1)?)
    }

    /// [`decode_step`](Self::decode_step) up to the decoder's final hidden states `[B, 1, D]`.
    pub(crate) fn decode_step_hidden(
        &self,
        tokens: &Tensor,
        cache: &mut DecoderCache,
    ) -> Result<Tensor> {
        let mut x = self.step_input(tokens, cache.batch_size(), cache.len())?;
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            x = layer.step(&x, i, cache)?;
        }
        cache.advance();
        Ok(x)
    }

    /// The embedded step tokens `[B, 1, D]` at position `position`, for a cache of `rows` rows.
    pub(crate) fn step_input(
        &self,
        tokens: &Tensor,
        rows: usize,
        position: usize,
    ) -> Result<Tensor> {
        let b = tokens.dims1().map_err(|_| {
            Error::Input(format!(
                "step tokens must be [batch], got {:?}",
                tokens.dims()
            ))
        })?;
        if b != rows {
            return Err(Error::Input(format!(
                "{b} step tokens for a cache of {rows} rows"
            )));
        }
        self.embed(
            &self.decoder_embed,
            &tokens.to_device(&self.device)?.unsqueeze(1)?,
            position,
        )
    }
}

/// `dims` with the last one replaced by `last`.
pub(crate) fn dims_with_last(dims: &[usize], last: usize) -> Vec<usize> {
    let mut out = dims.to_vec();
    if let Some(l) = out.last_mut() {
        *l = last;
    }
    out
}
