//! `InferenceModel`: a [`MarianModel`] frozen for decoding: detached weights in the layouts the
//! CPU's products run fastest with, the output panels, and the KV cache decoding steps through.
//!
//! [`MarianModel::freeze`] builds it; it encodes, force-decodes and decodes step by step exactly as
//! the model does in eval mode (the same maths, other memory layouts), and through [`Decoding`] it
//! is the [`StepDecoder`] that [`generate`](crate::generate::generate) searches with. On the CPU in
//! f32 the cache keeps keys and values in host memory behind per-row tables (`host_kv`), so
//! reordering beams copies nothing; elsewhere it is the model's own [`DecoderCache`].

mod head;
mod host_kv;

use std::borrow::Cow;

use candle_core::{DType, Device, Tensor};

use crate::cache::DecoderCache;
use crate::config::Config;
use crate::dropout::Mode;
use crate::error::Result;
use crate::generate::{masked_top_k, GenerateError, StepDecoder, TopRequest};
use crate::model::MarianModel;
use head::OutputHead;
use host_kv::HostKv;

/// The Marian model frozen for decoding (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct InferenceModel {
    /// The architecture on detached weights, dense layers transposed on the CPU.
    model: MarianModel,
    head: OutputHead,
}

impl InferenceModel {
    pub(crate) fn new(model: &MarianModel) -> Result<Self> {
        let model = model.frozen()?;
        let head = OutputHead::new(&model)?;
        Ok(InferenceModel { model, head })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &Config {
        self.model.config()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// The dtype of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.model.dtype()
    }

    /// Encoder: `src_ids` `[B, S]`, `src_mask` `[B, S]` (1 = token, 0 = pad) -> `[B, S, D]`.
    pub fn encode(&self, src_ids: &Tensor, src_mask: &Tensor) -> Result<Tensor> {
        self.model.encode(src_ids, src_mask, Mode::Eval)
    }

    /// Output layer: hidden `[..., D]` -> logits `[..., V]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.logits(&self.model, hidden)
    }

    /// Teacher forcing: `tgt_in` `[B, T]` (decoder start + target[..-1]) -> logits `[B, T, V]`.
    pub fn decode(&self, tgt_in: &Tensor, enc: &Tensor, src_mask: &Tensor) -> Result<Tensor> {
        self.logits(
            &self
                .model
                .decode_hidden(tgt_in, enc, src_mask, Mode::Eval)?,
        )
    }

    /// Encoder and decoder in one call: logits `[B, T, V]`.
    pub fn forward(&self, src_ids: &Tensor, src_mask: &Tensor, tgt_in: &Tensor) -> Result<Tensor> {
        let enc = self.encode(src_ids, src_mask)?;
        self.decode(tgt_in, &enc, src_mask)
    }

    /// Starts incremental decoding for the encoder output `enc` `[B, S, D]`: the cross-attention
    /// keys and values of every layer are computed here, once.
    pub fn new_cache(&self, enc: &Tensor, src_mask: &Tensor) -> Result<InferenceCache> {
        let cache = self.model.new_cache(enc, src_mask)?;
        let kv = if self.device().is_cpu() && self.dtype() == DType::F32 {
            let cfg = self.config();
            let heads = cfg.decoder_attention_heads;
            Kv::Host(HostKv::from_fresh(&cache, heads, cfg.d_model / heads)?)
        } else {
            Kv::Tensors(cache)
        };
        Ok(InferenceCache { kv, len: 0 })
    }

    /// One decoding step: `tokens` `[B]` (the last token of each row; the decoder start token
    /// first) -> logits `[B, V]` for the next position. Appends this step's keys/values to `cache`.
    pub fn decode_step(&self, tokens: &Tensor, cache: &mut InferenceCache) -> Result<Tensor> {
        let x = match &mut cache.kv {
            Kv::Tensors(c) => self.model.decode_step_hidden(tokens, c)?,
            Kv::Host(host) => {
                let mut x = self
                    .model
                    .step_input(tokens, host.batch_size(), cache.len)?;
                host.begin_step();
                for (i, layer) in self.model.decoder_layers().iter().enumerate() {
                    x = host.layer_step(layer, i, &x, self.device())?;
                }
                x
            }
        };
        cache.len += 1;
        self.logits(&x.squeeze(1)?)
    }

    /// Encodes `src_ids` `[B, S]` (mask `[B, S]`) and returns the step decoder for their
    /// translations, one row per source.
    pub fn start_decoding(&self, src_ids: &Tensor, src_mask: &Tensor) -> Result<Decoding<'_>> {
        let enc = self.encode(src_ids, src_mask)?;
        Ok(Decoding {
            model: self,
            cache: self.new_cache(&enc, src_mask)?,
        })
    }
}

/// What [`InferenceModel`]'s incremental decoding keeps between steps.
#[derive(Debug, Clone)]
pub struct InferenceCache {
    kv: Kv,
    /// Tokens decoded so far.
    len: usize,
}

#[derive(Debug, Clone)]
enum Kv {
    Host(HostKv),
    Tensors(DecoderCache),
}

impl InferenceCache {
    /// Keeps the rows `rows` (u32 indices into the current batch, any order, repeats allowed): how
    /// beam search reorders hypotheses and how finished sentences are dropped.
    pub fn select(&self, rows: &Tensor) -> Result<InferenceCache> {
        let mut out = self.clone();
        let ids = rows.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        out.reorder(&ids, false)?;
        Ok(out)
    }

    /// [`select`](Self::select) in place, from host indices; `same_sources` as in
    /// [`StepDecoder::select`].
    fn reorder(&mut self, rows: &[u32], same_sources: bool) -> Result<()> {
        match &mut self.kv {
            Kv::Host(h) => h.reorder(rows),
            Kv::Tensors(c) => c.reorder(rows, same_sources),
        }
    }

    /// Tokens decoded so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been decoded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows (sentences or hypotheses) the cache holds.
    pub fn batch_size(&self) -> usize {
        match &self.kv {
            Kv::Host(h) => h.batch_size(),
            Kv::Tensors(c) => c.batch_size(),
        }
    }
}

/// An [`InferenceModel`] with the cache of one batch: the [`StepDecoder`] of its translations.
#[derive(Debug, Clone)]
pub struct Decoding<'a> {
    model: &'a InferenceModel,
    cache: InferenceCache,
}

impl Decoding<'_> {
    /// One decoder step: feeds one token per row and returns the logits `[rows, vocab]`, on the
    /// model's device.
    pub(crate) fn step_logits(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let t = Tensor::from_slice(tokens, tokens.len(), self.model.device())?;
        self.model.decode_step(&t, &mut self.cache)
    }
}

impl StepDecoder for Decoding<'_> {
    fn step(&mut self, tokens: &[u32]) -> std::result::Result<(Vec<f32>, usize), GenerateError> {
        let logits = self.step_logits(tokens)?;
        let (_, v) = logits.dims2()?;
        let logits = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok((logits, v))
    }

    fn step_top(
        &mut self,
        tokens: &[u32],
        req: &TopRequest,
    ) -> std::result::Result<Vec<f32>, GenerateError> {
        let logits = self.step_logits(tokens)?;
        Ok(masked_top_k(&logits, req)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    fn prefers_top(&self) -> bool {
        !self.model.device().is_cpu()
    }

    fn select(
        &mut self,
        rows: &[u32],
        same_sources: bool,
    ) -> std::result::Result<(), GenerateError> {
        Ok(self.cache.reorder(rows, same_sources)?)
    }
}

/// A model that [`generate`](crate::generate::generate) and [`score`](crate::generate::score) run
/// on: an [`InferenceModel`] as it is, or a [`MarianModel`] frozen for the one call (freeze it
/// once instead when decoding many batches).
pub trait AsInference {
    /// The model's configuration.
    fn config(&self) -> &Config;
    /// The inference model, borrowed or built.
    fn as_inference(&self) -> Result<Cow<'_, InferenceModel>>;
}

impl AsInference for InferenceModel {
    fn config(&self) -> &Config {
        InferenceModel::config(self)
    }

    fn as_inference(&self) -> Result<Cow<'_, InferenceModel>> {
        Ok(Cow::Borrowed(self))
    }
}

impl AsInference for MarianModel {
    fn config(&self) -> &Config {
        MarianModel::config(self)
    }

    fn as_inference(&self) -> Result<Cow<'_, InferenceModel>> {
        Ok(Cow::Owned(self.freeze()?))
    }
}
