//! What a training run is asked besides its recipe ([`RunOptions`]: resuming, output, stop signals,
//! profiling) and what it reports when it ends ([`Summary`]).

use crate::data::DataStats;
use crate::recipe::ValidMetric;
use crate::validate::Validation;
use std::path::PathBuf;

/// How [`crate::trainer::train`] runs besides the recipe.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the latest checkpoint in the output directory.
    pub resume: bool,
    /// Draw a progress bar (otherwise log lines go to stderr).
    pub progress: bool,
    /// Print nothing but errors.
    pub quiet: bool,
    /// Fault injection for tests: update attempts (1-based, skipped ones included) whose loss is
    /// treated as non-finite.
    pub fault_nan_updates: Vec<u64>,
    /// Resume from this checkpoint directory instead of the newest intact one (implies `resume`).
    pub resume_from: Option<PathBuf>,
    /// Set (to the signal's number) when the run should stop: the loop finishes the current
    /// update, saves a checkpoint and returns [`Error::Interrupted`]. Signal handling itself is
    /// the caller's (the binary's) business.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// Time each phase of every update (batch, forward, loss, backward, optimiser), waiting for
    /// the device after each; the means go into every log line and train record (`phase_ms`).
    /// The waits cost some throughput on a GPU, where phases otherwise overlap.
    pub profile_phases: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Optimiser updates taken in total (NaN/inf updates skipped are not counted).
    pub updates: u64,
    /// The state's epoch counter at the end: the epoch (0-based) the run stopped in, or
    /// `training.max_epochs` when that limit ended it.
    pub epochs: u64,
    /// Validation BLEU of the best checkpoint (if BLEU was computed).
    pub best_bleu: Option<f64>,
    /// The metric that chose `best/`, its value there and the update.
    pub best_by: ValidMetric,
    /// The `best_by` metric's value at `best/` (none if no validation ran).
    pub best_value: Option<f64>,
    /// The update `best/` was saved at.
    pub best_update: Option<u64>,
    /// `<output_dir>/best` if a validation chose one, else the last checkpoint.
    pub best_dir: PathBuf,
    /// The checkpoint holding the run's final state.
    pub last_dir: PathBuf,
    /// What happened to every training pair.
    pub train_stats: DataStats,
    /// What happened to every validation pair.
    pub valid_stats: DataStats,
    /// Updates skipped for a NaN/inf loss.
    pub nan_skipped: u64,
    /// Whether patience (`validation.patience`) ended the run before its budget.
    pub stopped_early: bool,
    /// The last validation, if the run validated.
    pub last_valid: Option<Validation>,
}
