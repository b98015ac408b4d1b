//! One module per subcommand: each owns its clap `Args` and a `run` function.

pub mod average;
pub mod bleu;
pub mod convert;
pub mod plot;
pub mod progress;
pub mod score;
pub mod train;
pub mod translate;
