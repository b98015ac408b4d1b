//! The model crate's error type: every failure names the file, key or shape involved.

use std::path::PathBuf;

/// Errors from configs, checkpoints and the model's forward passes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written or renamed. The OS error is the `source`, not part of the
    /// message: printing the chain (`{:#}`) says it once.
    #[error("{path}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` is not a JSON object.
    #[error("{path}: not a valid config.json: {message}")]
    ConfigJson {
        /// The config file (for [`crate::config::Config::from_json_str`], the path it was given).
        path: PathBuf,
        /// serde_json's parse error, or that the top level is not an object.
        message: String,
    },
    /// A `config.json` key has the wrong type, or a value no model can have.
    #[error("{path}: key `{key}`: {message}")]
    ConfigKey {
        /// The config file (`<config>` for a config checked when a model is built).
        path: PathBuf,
        /// The offending key, as spelled in `config.json`.
        key: String,
        /// What is wrong with its value: serde's message or the check that failed.
        message: String,
    },
    /// A checkpoint directory lacks a file the model needs.
    #[error("{dir}: {what} not found")]
    MissingFile {
        /// The directory looked in (for a weight shard, the directory of its index).
        dir: PathBuf,
        /// The file looked for: `config.json`, a shard's name, or the
        /// [`crate::checkpoint::WEIGHT_FILES`] joined by "or".
        what: String,
    },
    /// The weights file lacks a parameter the config calls for.
    #[error("{file}: missing weight `{key}` (expected shape {expected:?})")]
    MissingWeight {
        /// The weights file searched (`<varmap>` when saving from a `VarMap`).
        file: PathBuf,
        /// The parameter's Hugging Face name, e.g. `model.encoder.layers.0.fc1.weight`.
        key: String,
        /// The shape the config implies, outermost dimension first.
        expected: Vec<usize>,
    },
    /// A parameter in the weights file has a shape other than the config implies.
    #[error("{file}: weight `{key}` has shape {actual:?}, the config implies {expected:?}")]
    WeightShape {
        /// The weights file (`<varmap>` when saving from a `VarMap`).
        file: PathBuf,
        /// The parameter's name as found there (possibly an alias of a tied weight).
        key: String,
        /// The shape the config implies, outermost dimension first.
        expected: Vec<usize>,
        /// The shape the parameter has.
        actual: Vec<usize>,
    },
    /// The weights file could not be parsed (safetensors or PyTorch zip).
    #[error("{file}: cannot read weights: {message}")]
    Weights {
        /// The weights file, shard index or shard that failed.
        file: PathBuf,
        /// The parser's error (for a PyTorch tensor, prefixed by its key).
        message: String,
    },
    /// A hub id whose files are not in the local cache while `HF_HUB_OFFLINE` is set.
    #[error("model `{model}` not in the local cache ({cache}) and offline (HF_HUB_OFFLINE=1)")]
    NotCached {
        /// The model as given (hub id, with any `@revision`).
        model: String,
        /// The hub cache directory searched.
        cache: PathBuf,
    },
    /// A local path (see [`crate::checkpoint::locate`] for what looks like one) that does not exist.
    #[error("no such {kind}: {path}")]
    NoSuchPath {
        /// The path as given.
        path: String,
        /// What it looks like it names: `"directory"` or `"file"`.
        kind: &'static str,
    },
    /// Neither an existing path nor something shaped like a hub id (`org/name`).
    #[error("model `{0}`: no such file or directory, and not a hub id like `org/name`")]
    NotFound(String),
    /// Fetching a file from the hub failed.
    #[error("model `{model}`: fetching `{file}` from the hub failed: {message}")]
    Hub {
        /// The model as given (hub id, with any `@revision`).
        model: String,
        /// The file being fetched: `config.json`, `weights` (any weights file), or `(connection)`
        /// when the hub client could not be set up.
        file: String,
        /// hf-hub's error (for `weights`, one per weights file tried).
        message: String,
    },
    /// A sequence is longer than the model's positions go.
    #[error("sequence of {len} positions exceeds max_position_embeddings = {max}")]
    TooLong {
        /// Positions needed: the start position (tokens already decoded when decoding step by
        /// step, else 0) plus the new tokens.
        len: usize,
        /// The config's `max_position_embeddings`.
        max: usize,
    },
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
