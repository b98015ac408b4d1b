//! Train/eval mode and the seeded generator dropout masks come from.
//!
//! candle's CPU generator cannot be seeded and `candle_nn::ops::dropout` draws from it, so masks here
//! come from a ChaCha8 stream the caller seeds, and the stream position can be saved with a training
//! checkpoint for an exact resume.
//!
//! On a GPU, drawing masks on the host would mean generating and copying every mask element each
//! step, so masks there come from the device's own generator, which [`DropoutRng::seed_device`]
//! reseeds from the ChaCha stream before each pass: runs stay reproducible and resumable, but
//! the masks differ from the CPU's. [`DropoutRng::with_host_masks`] draws host masks everywhere,
//! for checks that need the same masks on CPU and GPU.

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Shape, Tensor};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Train or eval: passed to every forward. `Copy`, so it threads through the layers freely.
#[derive(Clone, Copy, Debug)]
pub enum Mode<'a> {
    /// No dropout, no layer drop: deterministic.
    Eval,
    /// Dropout as configured, masks drawn from the given generator.
    Train(&'a DropoutRng),
}

impl Mode<'_> {
    /// Whether dropout is active.
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }

    /// `x` with dropout of probability `p` in train mode (scaled by 1/(1-p), as PyTorch does); `x`
    /// itself in eval mode or when `p` is 0.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self {
            Mode::Train(rng) if p > 0.0 => rng.dropout(x, p),
            _ => Ok(x.clone()),
        }
    }
}

/// A seeded source of dropout masks. Shared by reference (`Mode::Train(&rng)`); a mutex inside keeps
/// the stream consistent if layers run on several threads.
#[derive(Debug)]
pub struct DropoutRng {
    rng: Mutex<ChaCha8Rng>,
    /// Draw masks on the host even for GPU tensors.
    host_only: bool,
}

/// Where a [`DropoutRng`] stands in its stream: save it with a checkpoint, restore it with
/// [`DropoutRng::from_state`] to draw the masks an uninterrupted run would have drawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 256-bit ChaCha key.
    pub seed: [u8; 32],
    /// The ChaCha stream number.
    pub stream: u64,
    /// 32-bit words consumed so far.
    pub word_pos: u64,
}

impl Clone for DropoutRng {
    fn clone(&self) -> Self {
        DropoutRng {
            rng: Mutex::new(self.lock().clone()),
            host_only: self.host_only,
        }
    }
}

impl DropoutRng {
    /// A generator whose whole stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        DropoutRng {
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            host_only: false,
        }
    }

    /// Masks for tensors on every device drawn on the host from the ChaCha stream: the same masks
    /// on CPU and GPU (slower on a GPU: each mask is generated on the CPU and copied over).
    pub fn with_host_masks(mut self) -> Self {
        self.host_only = true;
        self
    }

    /// Before a pass on a GPU: reseeds the device generator with the next ChaCha draw, so the
    /// pass's masks depend only on this generator's state. Nothing to do on the CPU, or with
    /// host masks.
    pub fn seed_device(&self, device: &Device) -> Result<()> {
        if !device.is_cpu() && !self.host_only {
            let seed = self.lock().next_u64();
            device.set_seed(seed)?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, ChaCha8Rng> {
        // A panic elsewhere cannot leave a ChaCha state half-updated: keep using it.
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current position in the stream.
    pub fn state(&self) -> RngState {
        let rng = self.lock();
        RngState {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            // 2^64 words is centuries of masks: the conversion cannot saturate in practice.
            word_pos: u64::try_from(rng.get_word_pos()).unwrap_or(u64::MAX),
        }
    }

    /// A generator continuing exactly where `state` was taken.
    pub fn from_state(state: RngState) -> Self {
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(u128::from(state.word_pos));
        DropoutRng {
            rng: Mutex::new(rng),
            host_only: false,
        }
    }

    /// A uniform draw in [0, 1) (used for layer drop).
    pub fn uniform(&self) -> f64 {
        (self.lock().next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` mask values drawn on the host, `kept` or `dropped`: element dropped iff its 32-bit
    /// draw is below p·2^32, one draw per element (both mask kinds, so they are the same draws).
    fn host_mask<T: Copy>(&self, n: usize, p: f64, kept: T, dropped: T) -> Vec<T> {
        let threshold = (p * 4294967296.0).min(4294967295.0) as u32;
        let mut bytes = vec![0u8; 4 * n];
        self.lock().fill_bytes(&mut bytes);
        bytes
            .chunks_exact(4)
            .map(|b| {
                if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >= threshold {
                    kept
                } else {
                    dropped
                }
            })
            .collect()
    }

    /// Which elements dropout keeps: each independently 0 with probability `p`, else 1 (u8).
    pub fn keep_mask(&self, shape: impl Into<Shape>, p: f64, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        if p >= 1.0 {
            return Ok(Tensor::zeros(shape, DType::U8, device)?);
        }
        if !device.is_cpu() && !self.host_only {
            // Kept iff u ≥ p for u uniform in [0, 1): on the device, no host round trip.
            let u = Tensor::rand(0f32, 1f32, shape, device)?;
            return Ok(u.ge(p)?);
        }
        let keep = self.host_mask(n, p, 1u8, 0u8);
        Ok(Tensor::from_vec(keep, shape, device)?)
    }

    /// A dropout mask: each element independently 0 with probability `p`, else 1/(1-p).
    pub fn mask(
        &self,
        shape: impl Into<Shape>,
        p: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if p >= 1.0 {
            return Ok(Tensor::zeros(shape, dtype, device)?);
        }
        if !device.is_cpu() && !self.host_only {
            let keep = self.keep_mask(shape, p, device)?.to_dtype(DType::F32)?;
            return Ok((keep * f64::from(scale(p)))?.to_dtype(dtype)?);
        }
        let values = self.host_mask(shape.elem_count(), p, scale(p), 0.0f32);
        let mask = Tensor::from_vec(values, shape, device)?;
        Ok(if dtype == DType::F32 {
            mask
        } else {
            mask.to_dtype(dtype)?
        })
    }

    /// `x` with dropout of probability `p`, scaled by 1/(1-p). On a GPU from a keep mask
    /// ([`DropoutRng::keep_mask`]), so the backward keeps one byte per element, not an f32.
    pub fn dropout(&self, x: &Tensor, p: f64) -> Result<Tensor> {
        if p >= 1.0 {
            return Ok(x.zeros_like()?);
        }
        if x.device().is_cpu() {
            // The CPU keeps the f32 mask: its training speed measured no better with the byte
            // mask (scripts/bench_ab.sh), and the masks are the same draws either way.
            let mask = self.mask(x.shape(), p, x.dtype(), x.device())?;
            return Ok(x.mul(&mask)?);
        }
        let keep = self.keep_mask(x.shape(), p, x.device())?;
        Ok(crate::ops::apply_keep_mask(x, &keep, scale(p))?)
    }
}

/// The factor kept elements are scaled by, 1/(1-p), as an f32 (what the masks hold).
fn scale(p: f64) -> f32 {
    (1.0 / (1.0 - p)) as f32
}
