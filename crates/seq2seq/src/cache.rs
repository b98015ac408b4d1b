//! `DecoderCache`: what incremental decoding keeps between steps, held outside the model's weights so
//! one model serves any number of concurrent searches.

use candle_core::Tensor;

use crate::error::Result;

/// Per-layer keys and values for incremental decoding: cross-attention K/V computed once from the
/// encoder output, self-attention K/V growing by one position per step. Tensors are `[B, H, L, dh]`.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    /// Self-attention (keys, values) per decoder layer; `None` before the first step.
    pub(crate) self_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Cross-attention (keys, values) per decoder layer, `[B, H, S, dh]`.
    pub(crate) cross_kv: Vec<(Tensor, Tensor)>,
    /// Additive source padding mask `[B, 1, 1, S]`.
    pub(crate) cross_mask: Tensor,
    /// Tokens decoded so far.
    pub(crate) len: usize,
}

impl DecoderCache {
    /// Keeps the rows `rows` (u32 indices into the current batch, any order, repeats allowed): how
    /// beam search reorders hypotheses and how finished sentences are dropped.
    pub fn select(&self, rows: &Tensor) -> Result<DecoderCache> {
        let rows = rows.to_device(self.cross_mask.device())?;
        let pick = |t: &Tensor| t.index_select(&rows, 0);
        let self_kv = self
            .self_kv
            .iter()
            .map(|kv| match kv {
                Some((k, v)) => Ok(Some((pick(k)?, pick(v)?))),
                None => Ok(None),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let cross_kv = self
            .cross_kv
            .iter()
            .map(|(k, v)| Ok((pick(k)?, pick(v)?)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(DecoderCache {
            self_kv,
            cross_kv,
            cross_mask: pick(&self.cross_mask)?,
            len: self.len,
        })
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
        self.cross_mask.dims().first().copied().unwrap_or(0)
    }
}
