//! `add_bias_act`: the feed-forward's `act(x + b)` in one pass forward and one back (CPU kernels
//! and, built with `cuda`, CUDA ones in f32 and bf16); `add_bias_act_composed` elsewhere.
//!
//! The composed version keeps `x + b` for the backward beside `x` and the output, and runs the
//! activation's derivative as 3 (relu) to 13 (gelu) tensor ops over the layer's widest activations;
//! here the backward recomputes `x + b` in the one pass that applies the derivative, and the bias
//! gradient is a matrix product (as in [`super::add_bias`]).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use rdrop_kernels::{
    available, contiguous, cuda_kernels_for, float_dispatch, row_width, rows_per_task, Float,
};

use crate::config::Activation;

const OP: &str = "bias + activation";

/// `act(x + bias)`, `x` `[..., D]`, `bias` `[D]`, differentiable in both.
pub fn add_bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    let fused =
        available(x) || (cuda_kernels_for(x) && matches!(x.dtype(), DType::F32 | DType::BF16));
    if fused && x.dtype() == bias.dtype() {
        x.contiguous()?
            .apply_op2(&bias.contiguous()?, BiasAct { act })
    } else {
        add_bias_act_composed(x, bias, act)
    }
}

/// The same from candle's ops: the reference of the tests, and the path of other devices/dtypes.
pub fn add_bias_act_composed(
    x: &Tensor,
    bias: &Tensor,
    act: Activation,
) -> candle_core::Result<Tensor> {
    let z = x.broadcast_add(bias)?;
    match act {
        Activation::Silu => z.silu(),
        Activation::Gelu => z.gelu_erf(),
        Activation::GeluTanh => z.gelu(),
        Activation::Relu => z.relu(),
    }
}

/// √(2/π), of the tanh approximation.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// 1/√(2π), the normal density's constant.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// The kernels' float types with the error function (candle's, which its `gelu_erf` uses).
trait ActFloat: Float {
    fn erf(self) -> Self;
}

impl ActFloat for f32 {
    #[inline(always)]
    fn erf(self) -> f32 {
        candle_core::cpu::erf::erf_f32(self)
    }
}

impl ActFloat for f64 {
    #[inline(always)]
    fn erf(self) -> f64 {
        candle_core::cpu::erf::erf_f64(self)
    }
}

#[inline(always)]
fn c<T: ActFloat>(v: f64) -> T {
    T::from_f64(v)
}

#[inline(always)]
fn silu<T: ActFloat>(z: T) -> T {
    z / (T::one() + (-z).exp())
}

#[inline(always)]
fn silu_grad<T: ActFloat>(z: T) -> T {
    let s = T::one() / (T::one() + (-z).exp());
    s * (T::one() + z * (T::one() - s))
}

#[inline(always)]
fn gelu<T: ActFloat>(z: T) -> T {
    c::<T>(0.5) * z * (T::one() + (z * c(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// Φ(z) + z·φ(z).
#[inline(always)]
fn gelu_grad<T: ActFloat>(z: T) -> T {
    c::<T>(0.5) * (T::one() + (z * c(std::f64::consts::FRAC_1_SQRT_2)).erf())
        + z * c(INV_SQRT_2PI) * (c::<T>(-0.5) * z * z).exp()
}

#[inline(always)]
fn gelu_tanh<T: ActFloat>(z: T) -> T {
    let t = (c::<T>(SQRT_2_OVER_PI) * z * (T::one() + c::<T>(0.044715) * z * z)).tanh();
    c::<T>(0.5) * z * (T::one() + t)
}

#[inline(always)]
fn gelu_tanh_grad<T: ActFloat>(z: T) -> T {
    let t = (c::<T>(SQRT_2_OVER_PI) * z * (T::one() + c::<T>(0.044715) * z * z)).tanh();
    c::<T>(0.5) * (T::one() + t)
        + c::<T>(0.5)
            * z
            * (T::one() - t * t)
            * c(SQRT_2_OVER_PI)
            * (T::one() + c::<T>(3.0 * 0.044715) * z * z)
}

#[inline(always)]
fn relu<T: ActFloat>(z: T) -> T {
    if z > T::zero() {
        z
    } else {
        T::zero()
    }
}

/// PyTorch's convention: 0 at 0.
#[inline(always)]
fn relu_grad<T: ActFloat>(z: T) -> T {
    if z > T::zero() {
        T::one()
    } else {
        T::zero()
    }
}

/// `out[r][j] = f(x[r][j] + b[j], g[r][j])` over rows of width `d`, in parallel row chunks; `g`
/// is the incoming gradient (the forward passes `x` again and ignores it).
fn map_rows<T: ActFloat>(
    x: &[T],
    b: &[T],
    g: &[T],
    d: usize,
    f: impl Fn(T, T) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let chunk = d * rows_per_task(x.len() / d.max(1));
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
        .for_each(|(o, (x, g))| {
            for ((orow, xrow), grow) in o.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                for (((o, &x), &g), &b) in orow.iter_mut().zip(xrow).zip(grow).zip(b) {
                    *o = f(x + b, g);
                }
            }
        });
    out
}

fn forward<T: ActFloat>(act: Activation, x: &[T], b: &[T], d: usize) -> Vec<T> {
    match act {
        Activation::Silu => map_rows(x, b, x, d, |z, _| silu(z)),
        Activation::Gelu => map_rows(x, b, x, d, |z, _| gelu(z)),
        Activation::GeluTanh => map_rows(x, b, x, d, |z, _| gelu_tanh(z)),
        Activation::Relu => map_rows(x, b, x, d, |z, _| relu(z)),
    }
}

fn backward<T: ActFloat>(act: Activation, x: &[T], b: &[T], g: &[T], d: usize) -> Vec<T> {
    match act {
        Activation::Silu => map_rows(x, b, g, d, |z, g| g * silu_grad(z)),
        Activation::Gelu => map_rows(x, b, g, d, |z, g| g * gelu_grad(z)),
        Activation::GeluTanh => map_rows(x, b, g, d, |z, g| g * gelu_tanh_grad(z)),
        Activation::Relu => map_rows(x, b, g, d, |z, g| g * relu_grad(z)),
    }
}

/// The activation's number in `bias_act.cu`.
#[cfg(feature = "cuda")]
fn code(act: Activation) -> i32 {
    match act {
        Activation::Silu => 0,
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Relu => 3,
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The launches of `bias_act.cu`'s kernels: one grid-stride pass over the elements.
    use super::OP;
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg, ValidAsZeroBits};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, DType, Layout};
    use rdrop_kernels::cuda::contiguous_view;
    use rdrop_kernels::row_width;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/bias_act.ptx"));

    /// `kernel` (`rdrop_bias_act[_grad]`, the dtype's suffix added) over `x` `[rows, d]` with
    /// `b` `[d]` and, for the gradient, `g` shaped like `x`.
    pub(super) fn launch(
        kernel: &str,
        act: i32,
        (xs, xl): (&CudaStorage, &Layout),
        (bs, bl): (&CudaStorage, &Layout),
        g: Option<(&CudaStorage, &Layout)>,
    ) -> candle_core::Result<CudaStorage> {
        fn typed<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
            kernel: &str,
            act: i32,
            (xs, xl): (&CudaStorage, &Layout),
            (bs, bl): (&CudaStorage, &Layout),
            g: Option<(&CudaStorage, &Layout)>,
        ) -> candle_core::Result<CudaStorage> {
            let d = row_width(xl, bl, OP)?;
            let dev = &xs.device;
            let x = contiguous_view::<T>(xs, xl, OP, "x")?;
            let b = contiguous_view::<T>(bs, bl, OP, "bias")?;
            let g = match g {
                Some((gs, gl)) => {
                    if gl.shape() != xl.shape() {
                        candle_core::bail!("{OP}: gradient {:?} for x {:?}", gl.shape(), xl.shape())
                    }
                    Some(contiguous_view::<T>(gs, gl, OP, "gradient")?)
                }
                None => None,
            };
            let n = xl.shape().elem_count();
            let out = dev.alloc_zeros::<T>(n.max(1))?;
            if n > 0 {
                let func = dev.get_or_load_custom_func(kernel, "rdrop_seq2seq_bias_act", PTX)?;
                let mut l = func.builder();
                l.arg(&x);
                l.arg(&b);
                if let Some(g) = &g {
                    l.arg(g);
                }
                l.arg(&out);
                candle_core::builder_arg!(l, n as u64, d as u32, act);
                // SAFETY: `x`, `g` and `out` hold `n` elements, `b` the row width `d`.
                unsafe { l.launch(rdrop_kernels::cuda::elementwise(n)) }.w()?;
            }
            Ok(T::wrap_cuda_slice(out, dev.clone()))
        }
        match xs.dtype() {
            DType::F32 => typed::<f32>(&format!("{kernel}_f32"), act, (xs, xl), (bs, bl), g),
            DType::BF16 => {
                typed::<half::bf16>(&format!("{kernel}_bf16"), act, (xs, xl), (bs, bl), g)
            }
            dtype => candle_core::bail!("{OP}: no CUDA kernel for {dtype:?}"),
        }
    }
}

struct BiasAct {
    act: Activation,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "rdrop-bias-act"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = row_width(xl, bl, OP)?;
        let out = float_dispatch!(OP, xs, |T| forward::<T>(
            self.act,
            contiguous(xs, xl, OP, "x")?,
            contiguous(bs, bl, OP, "bias")?,
            d
        ));
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = cuda::launch("rdrop_bias_act", code(self.act), (xs, xl), (bs, bl), None)?;
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gz = x.apply_op3_no_bwd(bias, &grad.contiguous()?, &BiasActGrad { act: self.act })?;
        let d = bias.dim(0)?;
        let rows = gz.elem_count() / d.max(1);
        // Σ over rows as ones·G: a matrix product instead of a strided reduction.
        let ones = Tensor::ones((1, rows), gz.dtype(), gz.device())?;
        let gb = ones.matmul(&gz.reshape((rows, d))?)?.reshape(d)?;
        Ok((Some(gz), Some(gb)))
    }
}

/// Backward of [`BiasAct`]: (x, bias, grad) -> grad · act'(x + bias), the gradient of both `x`
/// and, summed over rows, the bias.
struct BiasActGrad {
    act: Activation,
}

impl CustomOp3 for BiasActGrad {
    fn name(&self) -> &'static str {
        "rdrop-bias-act-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = row_width(xl, bl, OP)?;
        if gl.shape() != xl.shape() {
            candle_core::bail!("{OP}: gradient {:?} for x {:?}", gl.shape(), xl.shape())
        }
        let out = float_dispatch!(OP, xs, |T| backward::<T>(
            self.act,
            contiguous(xs, xl, OP, "x")?,
            contiguous(bs, bl, OP, "bias")?,
            contiguous(gs, gl, OP, "gradient")?,
            d
        ));
        Ok((out, xl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let out = cuda::launch(
            "rdrop_bias_act_grad",
            code(self.act),
            (xs, xl),
            (bs, bl),
            Some((gs, gl)),
        )?;
        Ok((out, xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_support::{close, grads, random};

    const ALL: [Activation; 4] = [
        Activation::Silu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Relu,
    ];

    #[test]
    fn values_match_candles_activations() {
        let (x, b) = (random(&[3, 5, 17], 21), random(&[17], 22));
        for act in ALL {
            let fused = add_bias_act(&x, &b, act).unwrap();
            let composed = add_bias_act_composed(&x, &b, act).unwrap();
            close(&format!("{act:?}"), &fused, &composed);
        }
    }

    /// Gradients against central differences of candle's composed forward, in f64 (candle's own
    /// gelu backward rounds its constants to 6 digits, so it is no reference at this tolerance).
    #[test]
    fn gradients_match_finite_differences() {
        let (rows, d) = (6, 13);
        let (x, b) = (random(&[rows, d], 31), random(&[d], 32));
        let r = random(&[rows, d], 99);
        let loss = |x: &Tensor, b: &Tensor, act| -> f64 {
            (add_bias_act_composed(x, b, act).unwrap() * r.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let bump = |t: &Tensor, i: usize, h: f64| -> Tensor {
            let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            v[i] += h;
            Tensor::from_vec(v, t.shape(), t.device()).unwrap()
        };
        let h = 1e-5;
        for act in ALL {
            let y = add_bias_act(&x, &b, act).unwrap();
            let g = grads(&y, &[&x, &b]);
            for (k, var) in [x.as_tensor(), b.as_tensor()].into_iter().enumerate() {
                let got = g[k].flatten_all().unwrap().to_vec1::<f64>().unwrap();
                for (i, &got) in got.iter().enumerate() {
                    let (xp, xm, bp, bm) = if k == 0 {
                        (
                            bump(var, i, h),
                            bump(var, i, -h),
                            b.as_tensor().clone(),
                            b.as_tensor().clone(),
                        )
                    } else {
                        (
                            x.as_tensor().clone(),
                            x.as_tensor().clone(),
                            bump(var, i, h),
                            bump(var, i, -h),
                        )
                    };
                    let want = (loss(&xp, &bp, act) - loss(&xm, &bm, act)) / (2.0 * h);
                    assert!(
                        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "{act:?} grad {}[{i}]: {got} vs {want}",
                        ["x", "bias"][k]
                    );
                }
            }
        }
    }

    /// Relu's and silu's derivatives candle writes out exactly: the fused backward agrees with
    /// candle's to rounding.
    #[test]
    fn relu_and_silu_gradients_match_candles_backward() {
        let (x, b) = (random(&[4, 9], 41), random(&[9], 42));
        for act in [Activation::Relu, Activation::Silu] {
            let fused = add_bias_act(&x, &b, act).unwrap();
            let composed = add_bias_act_composed(&x, &b, act).unwrap();
            for (a, c) in grads(&fused, &[&x, &b])
                .iter()
                .zip(&grads(&composed, &[&x, &b]))
            {
                close(&format!("{act:?} grad"), a, c);
            }
        }
    }

    #[test]
    fn f32_follows_the_f64_kernel() {
        let (x, b) = (random(&[8, 33], 51), random(&[33], 52));
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        for act in ALL {
            let want = add_bias_act(&x, &b, act).unwrap();
            let got = add_bias_act(&f(&x), &f(&b), act)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap();
            let err = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(err < 1e-6, "{act:?}: f32 off by {err}");
        }
    }
}
