//! Typed errors of the trainer: every message names the file, line, key or value involved.

use std::path::PathBuf;

/// Everything that can go wrong while preparing or running a training job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written. The OS error is the `source`, not part of the message:
    /// printing the chain (`{:#}`) says it once.
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The recipe does not parse, has an unknown key, or holds values that cannot work.
    #[error("recipe {origin}: {message}")]
    Recipe { origin: String, message: String },
    /// A `--set key=value` override is malformed.
    #[error("--set {spec}: {message}")]
    Override { spec: String, message: String },
    /// Source and target files of a text corpus have different numbers of lines.
    #[error("misaligned parallel files: {} has {source_lines} lines but {} has {target_lines}", source_path.display(), target_path.display())]
    Misaligned {
        source_path: PathBuf,
        source_lines: usize,
        target_path: PathBuf,
        target_lines: usize,
    },
    /// A line of a corpus is not valid UTF-8.
    #[error(transparent)]
    InvalidUtf8(#[from] rdrop_text::InvalidUtf8),
    /// A TSV or JSONL line lacks a column or field, or is not valid JSON.
    #[error("{}:{line}: {message}", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The recipe's data section does not say which files to read.
    #[error("data.{split}: {message}")]
    DataSpec { split: String, message: String },
    /// No training pair survived reading and filtering.
    #[error("no usable training pairs in {what} ({stats})")]
    NoData { what: String, stats: String },
    /// The model crate: configs, weights, forward passes.
    #[error(transparent)]
    Model(#[from] rdrop_seq2seq::error::Error),
    /// A tokenizer could not be loaded, trained, saved or run.
    #[error(transparent)]
    Tokenizer(#[from] rdrop_seq2seq::tokenizer::TokenizerError),
    /// Decoding (validation BLEU) failed.
    #[error(transparent)]
    Generate(#[from] rdrop_seq2seq::generate::GenerateError),
    /// The recipe's `device` cannot be used here.
    #[error("device = {spec:?}: {error}")]
    Device {
        spec: String,
        error: Box<rdrop_seq2seq::device::DeviceError>,
    },
    /// The criterion rejected its inputs.
    #[error(transparent)]
    Loss(#[from] rdrop_loss::LossError),
    /// Scoring validation output failed.
    #[error(transparent)]
    Bleu(#[from] rdrop_bleu::Error),
    /// A lock around shared state was poisoned by a panic elsewhere.
    #[error("{0} lock poisoned by an earlier panic")]
    Poisoned(&'static str),
    /// Tensor-level failure.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A saved training state is missing a piece or does not match the run.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// The loss was NaN or infinite for too many updates.
    #[error("{message}")]
    NonFinite { message: String },
    /// A stop signal arrived: the run saved a checkpoint after the current update and stopped.
    #[error("stopped by {signal} after update {update}: checkpoint saved to {}; continue with --resume", checkpoint.display())]
    Interrupted {
        signal: String,
        update: u64,
        checkpoint: PathBuf,
    },
    /// A plot could not be drawn or written.
    #[error("plot {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
    /// Anything else with a message.
    #[error("{0}")]
    Other(String),
}

/// Result with the trainer's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// An error with its chain of causes, `a: b: c`, for messages that are built into other text
/// (the causes are not in `Display`, so they are printed once when the chain is printed).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}
