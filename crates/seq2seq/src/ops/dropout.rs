//! Dropout from a one-byte keep mask: `x · (keep ? scale : 0)` forward, the same on the gradient
//! backward, so a training step keeps a u8 mask per dropout instead of an f32 one (CPU and CUDA).
//!
//! candle's composed `x * mask` keeps the f32 mask for the backward: 4 bytes per element of every
//! dropped activation and attention probability.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;
use rdrop_kernels::{available, contiguous, cuda_kernels_for, float_dispatch};

const OP: &str = "dropout";

/// `x` times `scale` where `keep` (u8, the shape of `x`) is non-zero, else 0; differentiable in `x`.
pub fn apply_keep_mask(x: &Tensor, keep: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    let fused =
        available(x) || (cuda_kernels_for(x) && matches!(x.dtype(), DType::F32 | DType::BF16));
    if fused && keep.dtype() == DType::U8 && keep.shape() == x.shape() {
        x.contiguous()?
            .apply_op2(&keep.contiguous()?, KeepMask { scale })
    } else {
        let mask = (keep.to_dtype(DType::F32)? * scale as f64)?.to_dtype(x.dtype())?;
        x.mul(&mask)
    }
}

struct KeepMask {
    scale: f32,
}

impl CustomOp2 for KeepMask {
    fn name(&self) -> &'static str {
        "rdrop-dropout"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let keep = contiguous::<u8>(ks, kl, OP, "keep mask")?;
        let out = float_dispatch!(OP, xs, |T| {
            let x = contiguous::<T>(xs, xl, OP, "x")?;
            // The same products as `x * mask` with an f32 mask of `scale` and 0.
            let (on, off) = (T::from_f64(self.scale as f64), T::from_f64(0.0));
            let mut out = vec![T::from_f64(0.0); x.len()];
            out.par_chunks_mut(1 << 14)
                .zip(x.par_chunks(1 << 14).zip(keep.par_chunks(1 << 14)))
                .for_each(|(o, (x, k))| {
                    for ((o, &x), &k) in o.iter_mut().zip(x).zip(k) {
                        *o = x * if k != 0 { on } else { off };
                    }
                });
            out
        });
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
        use candle_core::cuda_backend::{CudaDType, WrapErr};
        use candle_core::CudaStorage;
        use rdrop_kernels::cuda::contiguous_view;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dropout.ptx"));
        fn launch<
            T: CudaDType + DeviceRepr + candle_core::cuda_backend::cudarc::driver::ValidAsZeroBits,
        >(
            kernel: &str,
            xs: &CudaStorage,
            xl: &Layout,
            keep: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, u8>,
            scale: f32,
        ) -> candle_core::Result<CudaStorage> {
            let dev = &xs.device;
            let x = contiguous_view::<T>(xs, xl, OP, "x")?;
            let n = xl.shape().elem_count();
            let out = dev.alloc_zeros::<T>(n.max(1))?;
            if n > 0 {
                let func = dev.get_or_load_custom_func(kernel, "rdrop_seq2seq_dropout", PTX)?;
                let mut b = func.builder();
                b.arg(&x);
                b.arg(keep);
                b.arg(&out);
                candle_core::builder_arg!(b, n as u64, scale);
                // SAFETY: `x`, `keep` and `out` each hold `n` elements (shapes checked by the op).
                unsafe { b.launch(rdrop_kernels::cuda::elementwise(n)) }.w()?;
            }
            Ok(T::wrap_cuda_slice(out, dev.clone()))
        }

        if kl.shape() != xl.shape() {
            candle_core::bail!("dropout: keep mask {:?} for x {:?}", kl.shape(), xl.shape())
        }
        let keep = contiguous_view::<u8>(ks, kl, OP, "keep mask")?;
        let out = match xs.dtype() {
            DType::F32 => launch::<f32>("rdrop_dropout_f32", xs, xl, &keep, self.scale)?,
            DType::BF16 => launch::<half::bf16>("rdrop_dropout_bf16", xs, xl, &keep, self.scale)?,
            dtype => candle_core::bail!("dropout: no CUDA kernel for {dtype:?}"),
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        keep: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(apply_keep_mask(grad, keep, self.scale)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::{close, grads, random};
    use candle_core::Device;

    #[test]
    fn keep_mask_matches_multiplying_by_the_f32_mask() {
        let x = random(&[4, 9, 33], 8);
        let keep: Vec<u8> = (0..4 * 9 * 33)
            .map(|i| ((i * 7 + i / 5) % 3 != 0) as u8)
            .collect();
        let keep = Tensor::from_vec(keep, (4, 9, 33), &Device::Cpu).unwrap();
        let scale = (1.0 / (1.0 - 0.3)) as f32;
        let fused = apply_keep_mask(&x, &keep, scale).unwrap();
        let mask = (keep.to_dtype(DType::F64).unwrap() * scale as f64).unwrap();
        let composed = x.mul(&mask).unwrap();
        close("value", &fused, &composed);
        close(
            "grad",
            &grads(&fused, &[&x])[0],
            &grads(&composed, &[&x])[0],
        );
    }
}
