//! `rdrop`: train, translate and score neural machine translation models with R-Drop.
//! One binary for the whole loop: `train` a recipe, `translate` text, `score` pairs, `bleu` outputs.

mod cmd;

use clap::{Parser, Subcommand};

/// `rdrop --version`: the release, the commit it was built from and the compiled-in devices.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RDROP_COMMIT"),
    "; devices: cpu",
    cuda_feature!(),
    ")"
);

#[cfg(feature = "cuda")]
macro_rules! cuda_feature {
    () => {
        ", cuda"
    };
}
#[cfg(not(feature = "cuda"))]
macro_rules! cuda_feature {
    () => {
        ""
    };
}
use cuda_feature;

#[derive(Parser)]
#[command(name = "rdrop", version = VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train or fine-tune a model from a TOML recipe (R-Drop or plain label-smoothed CE).
    Train(cmd::train::Args),
    /// Translate text with greedy or beam search.
    Translate(cmd::translate::Args),
    /// Score source/target pairs: log-probability of each target under the model (force decoding).
    Score(cmd::score::Args),
    /// Corpus BLEU and chrF, identical to sacreBLEU, with paired significance tests.
    Bleu(Box<cmd::bleu::Args>),
    /// Average the parameters of the last N checkpoints of a run.
    Average(cmd::average::Args),
    /// Load a model (hub id, HF directory, pytorch_model.bin) and save it as config.json + model.safetensors.
    Convert(cmd::convert::Args),
    /// Plot the training curves of one or more runs into a PNG (CE, KL, lr, validation loss, BLEU, chrF).
    Plot(cmd::plot::Args),
}

fn main() {
    rdrop_train::malloc::keep_freed_memory();
    let cli = Cli::parse_from(cmd::bleu::sacrebleu_aliases(std::env::args_os()));
    let result = match cli.command {
        Command::Train(a) => cmd::train::run(a),
        Command::Translate(a) => cmd::translate::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Bleu(a) => cmd::bleu::run(*a),
        Command::Average(a) => cmd::average::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Plot(a) => cmd::plot::run(a),
    };
    if let Err(err) = result {
        // A closed pipe (`rdrop translate | head`) is the reader's choice, not a failure.
        if err.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
