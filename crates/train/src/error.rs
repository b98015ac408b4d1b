//! Typed errors of the trainer: every message names the file, line, key or value involved.

use std::path::PathBuf;

/// Everything that can go wrong while preparing or running a training job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written. The OS error is the `source`, not part of the message:
    /// printing the chain (`{:#}`) says it once.
    #[error("{}", path.display())]
    Io {
        /// The file or directory that was being read, written or created.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The recipe does not parse, has an unknown key, or holds values that cannot work.
    #[error("recipe {origin}: {message}")]
    Recipe {
        /// What it is about: the recipe's path (and `--set` overrides), `--resume`, or a key.
        origin: String,
        /// What is wrong (the TOML parser's message or a validation rule).
        message: String,
    },
    /// A `--set key=value` override is malformed.
    #[error("--set {spec}: {message}")]
    Override {
        /// The override as given, `key.sub=value`.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// Source and target files of a text corpus have different numbers of lines.
    #[error("misaligned parallel files: {} has {source_lines} lines but {} has {target_lines}", source_path.display(), target_path.display())]
    Misaligned {
        /// The source-language file.
        source_path: PathBuf,
        /// Number of lines in the source file.
        source_lines: usize,
        /// The target-language file.
        target_path: PathBuf,
        /// Number of lines in the target file.
        target_lines: usize,
    },
    /// A line of a corpus is not valid UTF-8.
    #[error(transparent)]
    InvalidUtf8(#[from] rdrop_text::InvalidUtf8),
    /// A TSV or JSONL line lacks a column or field, or is not valid JSON.
    #[error("{}:{line}: {message}", path.display())]
    BadLine {
        /// The corpus file.
        path: PathBuf,
        /// 1-based line number within it.
        line: usize,
        /// What is missing or malformed.
        message: String,
    },
    /// The recipe's data section does not say which files to read.
    #[error("data.{split}: {message}")]
    DataSpec {
        /// The split whose section is incomplete (`train` or `valid`).
        split: String,
        /// Which key is missing, for the configured format.
        message: String,
    },
    /// No training pair survived reading and filtering.
    #[error("no usable training pairs in {what} ({stats})")]
    NoData {
        /// The split that came out empty (`data.train`).
        what: String,
        /// The read/filter counts ([`crate::data::DataStats`]), showing why every pair was dropped.
        stats: String,
    },
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
        /// The device string from the recipe, e.g. `cpu`, `cuda:0`.
        spec: String,
        /// Why it was rejected (boxed to keep [`Error`] small).
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
    Checkpoint {
        /// The checkpoint file or directory at fault.
        path: PathBuf,
        /// What is missing, unreadable or mismatched.
        message: String,
    },
    /// The loss was NaN or infinite for too many updates.
    #[error("{message}")]
    NonFinite {
        /// NaN/inf counts against the `nan.*` limits, the update reached, the last good checkpoint.
        message: String,
    },
    /// A stop signal arrived: the run saved a checkpoint after the current update and stopped.
    #[error("stopped by {signal} after update {update}: checkpoint saved to {}; continue with --resume", checkpoint.display())]
    Interrupted {
        /// The signal received: `SIGINT`, `SIGTERM` or `signal N`.
        signal: String,
        /// Updates done when it stopped; the checkpoint holds the state after them.
        update: u64,
        /// Directory of the checkpoint to pass to `--resume`.
        checkpoint: PathBuf,
    },
    /// A plot could not be drawn or written.
    #[error("plot {}: {message}", path.display())]
    Plot {
        /// The image file being written.
        path: PathBuf,
        /// The drawing backend's error.
        message: String,
    },
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
