//! Which tensors the fused kernels (CPU or CUDA) take, and reading them on the host: a custom op's
//! inputs as contiguous slices, a CPU f32 tensor's elements, and how per-row kernels split rows.

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, WithDType};

use crate::error::{Error, Result};

/// Whether the fused CPU kernels take `x`: a CPU tensor of f32 or f64.
pub fn available(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Whether an op's CUDA kernels take `x`: an f32 tensor on a CUDA device ([`cuda_kernels_for`]).
pub fn available_cuda(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && cuda_kernels_for(x)
}

/// Whether `x` is on a CUDA device and the CUDA kernels are on: in a build with the `cuda`
/// feature, unless `RDROP_CUDA_KERNELS=0` sends such tensors to the composed ops instead (to
/// measure one path against the other on the same GPU). Each op checks the dtypes it has.
pub fn cuda_kernels_for(x: &Tensor) -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && *ENABLED.get_or_init(|| std::env::var("RDROP_CUDA_KERNELS").map_or(true, |v| v != "0"))
}

/// A custom op's input `s` (layout `l`) as its contiguous slice of `T`; `op` and `what` name it in
/// the error.
pub fn contiguous<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
    what: &'static str,
) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(Error::NotContiguous { op, what }),
    }
}

/// Width of the last dimension of `l`, checked against a `[D]` parameter's layout.
pub fn row_width(l: &Layout, param: &Layout, op: &'static str) -> Result<usize> {
    let width = l.shape().dims().last().copied().unwrap_or(1);
    if param.shape().dims() != [width] {
        return Err(Error::RowWidth {
            op,
            width,
            shape: param.shape().dims().to_vec(),
        });
    }
    Ok(width)
}

/// Rows per parallel task: large enough to amortise the task, small enough to split 2 ways.
pub fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1)
}

/// Runs `f` on the elements of a contiguous f32 CPU tensor, without copying them; `what` names
/// the reader in the error.
pub fn with_host_f32<R>(t: &Tensor, what: &'static str, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => Err(Error::NotHostF32 {
            what,
            dtype: t.dtype(),
            location: t.device().location(),
        }),
    }
}

/// The elements of an f32 CPU tensor, in row-major order.
pub fn host_vec(t: &Tensor, what: &'static str) -> Result<Vec<f32>> {
    with_host_f32(&t.contiguous()?, what, |v| v.to_vec())
}

#[cfg(test)]
mod tests {
    use candle_core::backend::BackendStorage;
    use candle_core::{Device, Storage, Tensor};

    use super::*;

    #[test]
    fn only_cpu_f32_and_f64_take_the_kernels() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(available(&x));
        assert!(available(&x.to_dtype(DType::F64).unwrap()));
        assert!(!available(&x.to_dtype(DType::BF16).unwrap()));
    }

    #[test]
    fn slices_are_contiguous_or_an_error_naming_the_input() {
        let x = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let read = |t: &Tensor| {
            let (storage, layout) = t.storage_and_layout();
            let Storage::Cpu(s) = &*storage else {
                unreachable!("a CPU tensor")
            };
            assert_eq!(s.dtype(), DType::F32);
            contiguous::<f32>(s, layout, "op", "x").map(|v| v.to_vec())
        };
        assert_eq!(read(&x).unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        // A narrowed row starts at an offset: still contiguous.
        assert_eq!(read(&x.narrow(0, 1, 1).unwrap()).unwrap(), vec![3., 4., 5.]);
        let err = read(&x.t().unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "op: x must be contiguous");
        let err = with_host_f32(&x.t().unwrap(), "reader", |_| ()).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("reader: expected a contiguous f32 CPU tensor"));
        assert_eq!(
            host_vec(&x.t().unwrap(), "reader").unwrap(),
            vec![0., 3., 1., 4., 2., 5.]
        );
    }

    #[test]
    fn row_width_checks_the_parameter() {
        let x = Layout::contiguous((4, 3));
        assert_eq!(row_width(&x, &Layout::contiguous(3), "op").unwrap(), 3);
        let err = row_width(&x, &Layout::contiguous((1, 3)), "op").unwrap_err();
        assert_eq!(
            err.to_string(),
            "op: rows of width 3, parameter of shape [1, 3]"
        );
    }
}
