//! Where decoding's time goes: the phases of [`generate_profiled`](super::generate_profiled), each
//! timed after waiting for the device, so a GPU's asynchronous work is charged to the phase that
//! queued it.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::{masked_top_k, Result, StepDecoder, TopRequest};
use crate::inference::Decoding;

/// Seconds spent in each phase of decoding, summed over the batches profiled.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecodeProfile {
    /// Batches decoded.
    pub batches: usize,
    /// Decoder steps (one new token for every live row).
    pub steps: usize,
    /// Rows fed to the decoder, summed over steps (hypotheses × steps for beam search).
    pub rows: usize,
    /// Encoding the sources and computing the cross-attention keys and values.
    pub encode_s: f64,
    /// The decoder steps on the device, up to the logits (`[rows, vocab]`), and, when the search
    /// runs beside them, the log-normalisers and best tokens (`masked_top_k`).
    pub step_s: f64,
    /// Copying the logits, or the best tokens, to the host.
    pub download_s: f64,
    /// Keeping, repeating or reordering rows of the cache (beam reordering, finished sentences).
    pub select_s: f64,
    /// The search on the host: logits processors, log-softmax, arg-max or top-k, bookkeeping.
    pub search_s: f64,
}

impl DecodeProfile {
    /// Adds `other`'s counts and times to these.
    pub fn merge(&mut self, other: &DecodeProfile) {
        self.batches += other.batches;
        self.steps += other.steps;
        self.rows += other.rows;
        self.encode_s += other.encode_s;
        self.step_s += other.step_s;
        self.download_s += other.download_s;
        self.select_s += other.select_s;
        self.search_s += other.search_s;
    }

    /// All phases together.
    pub fn total_s(&self) -> f64 {
        self.encode_s + self.step_s + self.download_s + self.select_s + self.search_s
    }
}

/// A [`Decoding`] whose steps and row selections are timed into a [`DecodeProfile`].
pub(super) struct Profiled<'a, 'm> {
    pub(super) dec: Decoding<'m>,
    pub(super) profile: &'a mut DecodeProfile,
    pub(super) device: Device,
}

/// Seconds since `t`, once the device has finished what was queued.
pub(super) fn lap(device: &Device, t: &mut Instant) -> Result<f64> {
    device.synchronize()?;
    let now = Instant::now();
    let s = (now - *t).as_secs_f64();
    *t = now;
    Ok(s)
}

impl StepDecoder for Profiled<'_, '_> {
    fn step(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, usize)> {
        let mut t = Instant::now();
        let logits: Tensor = self.dec.step_logits(tokens)?;
        self.profile.step_s += lap(&self.device, &mut t)?;
        let (_, v) = logits.dims2()?;
        let host = logits
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        self.profile.download_s += lap(&self.device, &mut t)?;
        self.profile.steps += 1;
        self.profile.rows += tokens.len();
        Ok((host, v))
    }

    fn step_top(&mut self, tokens: &[u32], req: &TopRequest) -> Result<Vec<f32>> {
        let mut t = Instant::now();
        let logits = self.dec.step_logits(tokens)?;
        let stats = masked_top_k(&logits, req)?;
        self.profile.step_s += lap(&self.device, &mut t)?;
        let host = stats.flatten_all()?.to_vec1::<f32>()?;
        self.profile.download_s += lap(&self.device, &mut t)?;
        self.profile.steps += 1;
        self.profile.rows += tokens.len();
        Ok(host)
    }

    fn prefers_top(&self) -> bool {
        self.dec.prefers_top()
    }

    fn select(&mut self, rows: &[u32], same_sources: bool) -> Result<()> {
        let mut t = Instant::now();
        self.dec.select(rows, same_sources)?;
        self.profile.select_s += lap(&self.device, &mut t)?;
        Ok(())
    }
}
