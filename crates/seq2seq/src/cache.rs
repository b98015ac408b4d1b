//! `DecoderCache`: what incremental decoding keeps between steps, held outside the model's weights so
//! one model serves any number of concurrent searches.

use candle_core::{CpuStorage, Storage, Tensor};

use crate::error::{Error, Result};

/// Per-layer keys and values for incremental decoding: cross-attention K/V computed once from the
/// encoder output, self-attention K/V growing by one position per step.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    pub(crate) kv: Kv,
    /// Tokens decoded so far.
    pub(crate) len: usize,
}

/// Where the keys and values live.
#[derive(Debug, Clone)]
pub(crate) enum Kv {
    /// Tensors on the model's device, `[B, H, L, dh]`: reordering rows copies them.
    Tensors {
        /// Self-attention (keys, values) per decoder layer; `None` before the first step.
        self_kv: Vec<Option<(Tensor, Tensor)>>,
        /// Cross-attention (keys, values) per decoder layer, `[B, H, S, dh]`.
        cross_kv: Vec<(Tensor, Tensor)>,
        /// Additive source padding mask `[B, 1, 1, S]`.
        cross_mask: Tensor,
    },
    /// f32 host memory, for decoding on the CPU.
    Host(HostKv),
}

/// Keys and values in host memory, addressed through per-row tables: when beam search reorders
/// hypotheses or a sentence leaves the batch only the tables change, where tensors `[B, H, L, dh]`
/// would be copied whole at every step.
#[derive(Debug, Clone)]
pub(crate) struct HostKv {
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
    /// Per decoder layer, the self-attention keys of every position any row has decoded,
    /// `[entries, H·dh]`, appended to at each step and never moved.
    pub(crate) self_k: Vec<Vec<f32>>,
    /// The values, laid out as `self_k`.
    pub(crate) self_v: Vec<Vec<f32>>,
    /// Per live row, the entry of each of its positions (the same in every layer).
    pub(crate) entries: Vec<Vec<u32>>,
    /// Entries so far (rows of every `self_k[i]`).
    pub(crate) n_entries: usize,
    /// Per decoder layer, cross-attention keys per source sentence, `[N, H, S, dh]`.
    pub(crate) cross_k: Vec<Vec<f32>>,
    /// The values, laid out as `cross_k`.
    pub(crate) cross_v: Vec<Vec<f32>>,
    /// Additive source padding mask `[N, S]`.
    pub(crate) cross_mask: Vec<f32>,
    /// Source positions `S`.
    pub(crate) src_len: usize,
    /// Per live row, its source sentence (an index into the cross-attention tables).
    pub(crate) source: Vec<u32>,
}

/// Runs `f` on the elements of a contiguous f32 CPU tensor, without copying them.
pub(crate) fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => Err(Error::Input(format!(
            "host decoding cache: expected a contiguous f32 CPU tensor, got {:?} on {:?}",
            t.dtype(),
            t.device().location()
        ))),
    }
}

/// The elements of an f32 CPU tensor, in row-major order.
pub(crate) fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    with_host_f32(&t.contiguous()?, |v| v.to_vec())
}

impl DecoderCache {
    /// Keeps the rows `rows` (u32 indices into the current batch, any order, repeats allowed): how
    /// beam search reorders hypotheses and how finished sentences are dropped.
    pub fn select(&self, rows: &Tensor) -> Result<DecoderCache> {
        let mut out = self.clone();
        let ids = rows.to_dtype(candle_core::DType::U32)?.to_vec1::<u32>()?;
        out.reorder(&ids, false)?;
        Ok(out)
    }

    /// [`select`](Self::select) in place, from host indices. `same_sources`: every new row comes
    /// from a row of the same source sentence as the row it replaces, so per-source state (the
    /// cross-attention keys and values) stays as it is.
    pub(crate) fn reorder(&mut self, rows: &[u32], same_sources: bool) -> Result<()> {
        let n = self.batch_size();
        if let Some(&bad) = rows.iter().find(|&&r| r as usize >= n) {
            return Err(Error::Input(format!(
                "cache row {bad} selected from a cache of {n} rows"
            )));
        }
        match &mut self.kv {
            Kv::Host(h) => {
                h.entries = rows
                    .iter()
                    .map(|&r| h.entries[r as usize].clone())
                    .collect();
                h.source = rows.iter().map(|&r| h.source[r as usize]).collect();
            }
            Kv::Tensors {
                self_kv,
                cross_kv,
                cross_mask,
            } => {
                let idx = Tensor::from_slice(rows, rows.len(), cross_mask.device())?;
                let pick = |t: &Tensor| t.index_select(&idx, 0);
                for (k, v) in self_kv.iter_mut().flatten() {
                    *k = pick(k)?;
                    *v = pick(v)?;
                }
                // The beams of one sentence share its cross-attention keys/values and source
                // mask, so reordering beams within sentences leaves those rows unchanged.
                if !same_sources {
                    for (k, v) in cross_kv.iter_mut() {
                        *k = pick(k)?;
                        *v = pick(v)?;
                    }
                    *cross_mask = pick(cross_mask)?;
                }
            }
        }
        Ok(())
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
            Kv::Host(h) => h.source.len(),
            Kv::Tensors { cross_mask, .. } => cross_mask.dims().first().copied().unwrap_or(0),
        }
    }
}
