//! `DecoderCache`: the keys and values [`MarianModel`](crate::MarianModel)'s incremental decoding
//! keeps between steps, as tensors on the model's device (transformers' `past_key_values`); the
//! self-attention ones in buffers preallocated there and written in place, one position per step.
//!
//! It is held outside the model's weights, so one model serves any number of concurrent searches.
//! The inference model's host-memory cache for the CPU lives in [`crate::inference`].

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Positions a layer's self-attention buffers hold at first; they double when full, so a sentence
/// of `L` tokens copies its keys and values about once more in all, where appending by
/// concatenation copied all of them at every step.
const FIRST_CAPACITY: usize = 8;

/// One decoder layer's self-attention keys and values, `[B, H, capacity, dh]` each, written in
/// place one position per step; the cache's `len` positions are filled.
#[derive(Debug)]
struct SelfKv {
    k: Tensor,
    v: Tensor,
}

/// Steps write into the buffers in place, so a copy of the cache owns copies of them.
impl Clone for SelfKv {
    fn clone(&self) -> Self {
        SelfKv {
            k: self.k.copy().expect("copying a tensor on its own device"),
            v: self.v.copy().expect("copying a tensor on its own device"),
        }
    }
}

/// Per-layer keys and values for incremental decoding: cross-attention K/V computed once from the
/// encoder output, self-attention K/V in buffers preallocated on the model's device and filled one
/// position per step. Reordering rows copies the tensors.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    /// Self-attention keys and values per decoder layer; `None` before the first step.
    self_kv: Vec<Option<SelfKv>>,
    /// Cross-attention (keys, values) per decoder layer, `[B, H, S, dh]`.
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Additive source padding mask `[B, 1, 1, S]`.
    cross_mask: Tensor,
    /// Tokens decoded so far.
    len: usize,
}

/// Checks that every row in `rows` is below `n`, the rows a cache holds.
pub(crate) fn check_rows(rows: &[u32], n: usize) -> Result<()> {
    match rows.iter().find(|&&r| r as usize >= n) {
        Some(&bad) => Err(Error::Input(format!(
            "cache row {bad} selected from a cache of {n} rows"
        ))),
        None => Ok(()),
    }
}

impl DecoderCache {
    /// An empty cache for the cross-attention keys and values of every decoder layer and the
    /// additive source mask.
    pub(crate) fn new(cross_kv: Vec<(Tensor, Tensor)>, cross_mask: Tensor) -> Self {
        DecoderCache {
            self_kv: vec![None; cross_kv.len()],
            cross_kv,
            cross_mask,
            len: 0,
        }
    }

    /// Writes one position's self-attention keys and values (`[B, H, 1, dh]`) into layer `i`'s
    /// buffers, at position [`len`](Self::len), and returns all of them (`[B, H, len + 1, dh]`
    /// views of the buffers).
    pub(crate) fn append_self(
        &mut self,
        i: usize,
        k_new: Tensor,
        v_new: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let pos = self.len;
        let slot = self
            .self_kv
            .get_mut(i)
            .ok_or_else(|| Error::Input(format!("decoder layer {i} has no cache")))?;
        let (k_new, v_new) = (k_new.contiguous()?, v_new.contiguous()?);
        let grown = |buf: Option<&Tensor>, new: &Tensor| -> Result<Tensor> {
            let (b, h, _, dh) = new.dims4()?;
            Ok(match buf {
                None => Tensor::zeros((b, h, FIRST_CAPACITY, dh), new.dtype(), new.device())?,
                Some(t) => {
                    let cap = t.dim(2)?;
                    let more = Tensor::zeros((b, h, cap, dh), new.dtype(), new.device())?;
                    Tensor::cat(&[t, &more], 2)?
                }
            })
        };
        let full = match slot.as_ref() {
            None => true,
            Some(kv) => kv.k.dim(2)? <= pos,
        };
        if full {
            *slot = Some(SelfKv {
                k: grown(slot.as_ref().map(|kv| &kv.k), &k_new)?,
                v: grown(slot.as_ref().map(|kv| &kv.v), &v_new)?,
            });
        }
        let kv = slot.as_ref().expect("allocated above");
        kv.k.slice_set(&k_new, 2, pos)?;
        kv.v.slice_set(&v_new, 2, pos)?;
        Ok((kv.k.narrow(2, 0, pos + 1)?, kv.v.narrow(2, 0, pos + 1)?))
    }

    /// Layer `i`'s cross-attention keys and values, and the additive source mask.
    pub(crate) fn cross(&self, i: usize) -> (&Tensor, &Tensor, &Tensor) {
        let (k, v) = &self.cross_kv[i];
        (k, v, &self.cross_mask)
    }

    /// The additive source mask `[B, 1, 1, S]`.
    pub(crate) fn cross_mask(&self) -> &Tensor {
        &self.cross_mask
    }

    /// Decoder layers the cache holds keys and values for.
    pub(crate) fn layers(&self) -> usize {
        self.cross_kv.len()
    }

    /// Counts a step whose keys and values every layer has appended.
    pub(crate) fn advance(&mut self) {
        self.len += 1;
    }

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
        check_rows(rows, self.batch_size())?;
        let idx = Tensor::from_slice(rows, rows.len(), self.cross_mask.device())?;
        let pick = |t: &Tensor| t.index_select(&idx, 0);
        for kv in self.self_kv.iter_mut().flatten() {
            kv.k = pick(&kv.k)?;
            kv.v = pick(&kv.v)?;
        }
        // The beams of one sentence share its cross-attention keys/values and source mask, so
        // reordering beams within sentences leaves those rows unchanged.
        if !same_sources {
            for (k, v) in self.cross_kv.iter_mut() {
                *k = pick(k)?;
                *v = pick(v)?;
            }
            self.cross_mask = pick(&self.cross_mask)?;
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
        self.cross_mask.dims().first().copied().unwrap_or(0)
    }
}
