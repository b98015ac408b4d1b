//! One AdamW update of a parameter as three in-place passes (first moment, second moment, the
//! parameter), on the CPU and, built with `cuda`, on CUDA (`fused.cu`).
//!
//! The composed update launches about fifteen ops and allocates ten temporaries per parameter and
//! step; a model of two hundred parameter tensors makes that thousands of small launches. The CPU
//! passes apply the composed update's f32 operations in its order, so both give the same bits.

use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor};
use rayon::prelude::*;
use rdrop_kernels::{available, available_cuda, contiguous};

const OP: &str = "adamw";

/// The update's scalars for one step, as the composed update rounds them (f32).
#[derive(Debug, Clone, Copy)]
pub(super) struct Step {
    pub beta1: f64,
    pub beta2: f64,
    /// `1 − lr·weight_decay` for decayed parameters, else 1.
    pub decay: f64,
    /// `1 / √(1 − β2^t)`.
    pub inv_bc2_sqrt: f64,
    pub eps: f64,
    /// `lr / (1 − β1^t)`.
    pub step: f64,
}

/// Updates `m`, `v` and `theta` in place from `grad`; false (nothing done) where the passes do not
/// apply (not f32 on CPU or CUDA, mixed dtypes or shapes, non-contiguous), for the composed update.
pub(super) fn update(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    s: Step,
) -> candle_core::Result<bool> {
    let all = [theta, m, v, grad];
    let takes = (theta.dtype() == DType::F32 && available(theta)) || available_cuda(theta);
    if !takes
        || all.iter().any(|t| {
            t.dtype() != theta.dtype()
                || t.shape() != theta.shape()
                || !t.is_contiguous()
                || t.device().location() != theta.device().location()
        })
    {
        return Ok(false);
    }
    m.inplace_op2(
        grad,
        &Moment {
            beta: s.beta1,
            square: false,
        },
    )?;
    v.inplace_op2(
        grad,
        &Moment {
            beta: s.beta2,
            square: true,
        },
    )?;
    theta.inplace_op3(m, v, &Param(s))?;
    Ok(true)
}

/// `x ← x·β + (1 − β)·g` (or `g²`).
struct Moment {
    beta: f64,
    square: bool,
}

/// The f32 constants of `x·mul + add`, as candle's affine op rounds them.
fn f(x: f64) -> f32 {
    x as f32
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "rdrop-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = contiguous::<f32>(s2, l2, OP, "gradient")?;
        let x = host_mut(s1, l1)?;
        let (b, c) = (f(self.beta), f(1.0 - self.beta));
        let square = self.square;
        x.par_chunks_mut(1 << 14)
            .zip(g.par_chunks(1 << 14))
            .for_each(|(x, g)| {
                for (x, &g) in x.iter_mut().zip(g) {
                    let g = if square { g * g } else { g };
                    // (x·β + 0) + (g·(1 − β) + 0): the composed update's affine ops and add.
                    *x = (*x * b + 0.0) + (g * c + 0.0);
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = rdrop_kernels::cuda::contiguous_view::<f32>(s2, l2, OP, "gradient")?;
        let kernel = if self.square {
            "rdrop_adamw_moment2_f32"
        } else {
            "rdrop_adamw_moment1_f32"
        };
        cuda::launch(kernel, s1, l1, &[&g], &[f(self.beta), f(1.0 - self.beta)])
    }
}

/// `θ ← θ·decay − m / (√v·inv_bc2 + eps) · step`.
struct Param(Step);

impl InplaceOp3 for Param {
    fn name(&self) -> &'static str {
        "rdrop-adamw-param"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let m = contiguous::<f32>(s2, l2, OP, "first moment")?;
        let v = contiguous::<f32>(s3, l3, OP, "second moment")?;
        let theta = host_mut(s1, l1)?;
        let s = self.0;
        let (decay, inv_bc2, eps, step) = (f(s.decay), f(s.inv_bc2_sqrt), f(s.eps), f(s.step));
        theta
            .par_chunks_mut(1 << 14)
            .zip(m.par_chunks(1 << 14).zip(v.par_chunks(1 << 14)))
            .for_each(|(t, (m, v))| {
                for ((t, &m), &v) in t.iter_mut().zip(m).zip(v) {
                    // The composed update: θ·decay (skipped there when decay is 1, which is exact),
                    // (√v·inv_bc2 + 0)·1 + eps, m / that, ·step + 0, subtracted.
                    let denom = (v.sqrt() * inv_bc2 + 0.0) * 1.0 + eps;
                    *t = (*t * decay + 0.0) - ((m / denom) * step + 0.0);
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        use rdrop_kernels::cuda::contiguous_view;
        let m = contiguous_view::<f32>(s2, l2, OP, "first moment")?;
        let v = contiguous_view::<f32>(s3, l3, OP, "second moment")?;
        let s = self.0;
        let consts = [f(s.decay), f(s.inv_bc2_sqrt), f(s.eps), f(s.step)];
        cuda::launch("rdrop_adamw_param_f32", s1, l1, &[&m, &v], &consts)
    }
}

/// The elements of a contiguous f32 CPU storage, to update in place.
fn host_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    let (a, b) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("{OP}: the updated tensor must be contiguous"))
    })?;
    match s {
        CpuStorage::F32(data) => Ok(&mut data[a..b]),
        other => Err(candle_core::Error::Msg(format!(
            "{OP}: no CPU kernel for {:?}",
            candle_core::backend::BackendStorage::dtype(other)
        ))),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launching the kernels of `fused.cu`: one thread per element, grid-stride.
    use candle_core::cuda_backend::cudarc::driver::{CudaView, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adamw.ptx"));

    /// `kernel(x, srcs..., n, consts...)` over the `n` elements of `x`, updated in place.
    pub(super) fn launch(
        kernel: &str,
        x: &mut CudaStorage,
        l: &Layout,
        srcs: &[&CudaView<'_, f32>],
        consts: &[f32],
    ) -> candle_core::Result<()> {
        let dev = x.device.clone();
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("adamw: the updated tensor must be contiguous".into())
        })?;
        let n = b - a;
        if n == 0 {
            return Ok(());
        }
        let func = dev.get_or_load_custom_func(kernel, "rdrop_train_adamw", PTX)?;
        let slice = x.as_cuda_slice_mut::<f32>()?;
        let mut target = slice.slice_mut(a..b);
        let mut launch = func.builder();
        launch.arg(&mut target);
        for s in srcs {
            launch.arg(*s);
        }
        let n64 = n as u64;
        launch.arg(&n64);
        for c in consts {
            launch.arg(c);
        }
        // SAFETY: every view holds `n` f32 elements (shapes checked by `update`).
        unsafe { launch.launch(rdrop_kernels::cuda::elementwise(n)) }.w()?;
        Ok(())
    }
}
