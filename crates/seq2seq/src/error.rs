//! The model crate's error type: every failure names the file, key or shape involved.

use std::path::PathBuf;

/// Errors from configs, checkpoints and the model's forward passes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written or renamed. The OS error is the `source`, not part of the
    /// message: printing the chain (`{:#}`) says it once.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not a JSON object.
    #[error("{path}: not a valid config.json: {message}")]
    ConfigJson { path: PathBuf, message: String },
    /// A `config.json` key has the wrong type, or a value no model can have.
    #[error("{path}: key `{key}`: {message}")]
    ConfigKey {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A checkpoint directory lacks a file the model needs.
    #[error("{dir}: {what} not found")]
    MissingFile { dir: PathBuf, what: String },
    /// The weights file lacks a parameter the config calls for.
    #[error("{file}: missing weight `{key}` (expected shape {expected:?})")]
    MissingWeight {
        file: PathBuf,
        key: String,
        expected: Vec<usize>,
    },
    /// A parameter in the weights file has a shape other than the config implies.
    #[error("{file}: weight `{key}` has shape {actual:?}, the config implies {expected:?}")]
    WeightShape {
        file: PathBuf,
        key: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    /// The weights file could not be parsed (safetensors or PyTorch zip).
    #[error("{file}: cannot read weights: {message}")]
    Weights { file: PathBuf, message: String },
    /// A hub id whose files are not in the local cache while `HF_HUB_OFFLINE` is set.
    #[error("model `{model}` not in the local cache ({cache}) and offline (HF_HUB_OFFLINE=1)")]
    NotCached { model: String, cache: PathBuf },
    /// A local path (see [`crate::checkpoint::locate`] for what looks like one) that does not exist.
    #[error("no such {kind}: {path}")]
    NoSuchPath { path: String, kind: &'static str },
    /// Neither an existing path nor something shaped like a hub id (`org/name`).
    #[error("model `{0}`: no such file or directory, and not a hub id like `org/name`")]
    NotFound(String),
    /// Fetching a file from the hub failed.
    #[error("model `{model}`: fetching `{file}` from the hub failed: {message}")]
    Hub {
        model: String,
        file: String,
        message: String,
    },
    /// A sequence is longer than the model's positions go.
    #[error("sequence of {len} positions exceeds max_position_embeddings = {max}")]
    TooLong { len: usize, max: usize },
    /// Inputs of the wrong rank, dtype or batch size.
    #[error("bad input: {0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A CPU kernel could not read a tensor (not contiguous f32 on the CPU).
    #[error(transparent)]
    Kernel(#[from] rdrop_kernels::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
