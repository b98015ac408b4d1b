//! The kernels' error type: an input a kernel cannot read, named by the op and the input, or a
//! failed candle operation.

/// Why a kernel could not read its input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel input is not laid out contiguously in memory.
    #[error("{op}: {what} must be contiguous")]
    NotContiguous {
        /// The op (or its kind) that read it.
        op: &'static str,
        /// Which input.
        what: &'static str,
    },
    /// Host access to a tensor that is not a contiguous f32 tensor on the CPU.
    #[error("{what}: expected a contiguous f32 CPU tensor, got {dtype:?} on {location:?}")]
    NotHostF32 {
        /// What needed the elements.
        what: &'static str,
        /// The tensor's dtype.
        dtype: candle_core::DType,
        /// Where the tensor lives.
        location: candle_core::DeviceLocation,
    },
    /// A per-row parameter whose shape is not `[D]` for rows of width `D`.
    #[error("{op}: rows of width {width}, parameter of shape {shape:?}")]
    RowWidth {
        /// The op that applies the parameter.
        op: &'static str,
        /// The rows' width.
        width: usize,
        /// The parameter's shape.
        shape: Vec<usize>,
    },
    /// A dtype the op has no CPU kernel for.
    #[error("{op}: no CPU kernel for {dtype:?}")]
    DType {
        /// The op.
        op: &'static str,
        /// The input's dtype.
        dtype: candle_core::DType,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with the kernels' [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

// Custom ops report errors as candle's: the typed error travels inside it.
impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}
