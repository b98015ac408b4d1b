//! `rdrop train`: train or fine-tune a model from a TOML recipe, or (without one) run the embedded
//! default: a tiny model trained from scratch with R-Drop on a generated toy German→English corpus.

use anyhow::Context;
use rdrop_train::embedded;
use rdrop_train::recipe::Recipe;
use rdrop_train::trainer::{self, RunOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Recipe file (TOML). Without one, runs the embedded default (toy de→en, ~5 minutes on 2 cores).
    pub recipe: Option<PathBuf>,
    /// Override a recipe value, e.g. `--set criterion.alpha=0.7` (value parsed as TOML; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue from the latest checkpoint in the recipe's output_dir.
    #[arg(long)]
    pub resume: bool,
    /// Device: cpu, cuda or cuda:N (overrides the recipe's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// Print the resolved recipe (defaults filled in) and exit.
    #[arg(long)]
    pub print_recipe: bool,
    /// Only errors and the final result.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut overrides = args.set.clone();
    if let Some(d) = &args.device {
        overrides.push(format!("device={}", toml_quote(d)));
    }
    let recipe = match &args.recipe {
        Some(p) => Recipe::load(p, &overrides)?,
        None => embedded::recipe(&overrides)?,
    };
    if recipe.training.threads > 0 {
        // Before any numeric kernel runs: candle and rayon size their thread pools once, from this.
        std::env::set_var("RAYON_NUM_THREADS", recipe.training.threads.to_string());
    }
    if args.print_recipe {
        print!("{}", recipe.to_toml());
        return Ok(());
    }
    let opts = RunOptions {
        resume: args.resume,
        progress: std::io::stderr().is_terminal(),
        quiet: args.quiet,
        fault_nan_updates: Vec::new(),
    };
    if args.recipe.is_none() {
        if !args.quiet {
            eprintln!(
                "No recipe given: running the embedded default (toy German→English corpus generated into {}, tiny model, R-Drop α {}).",
                recipe.output_dir.display(),
                recipe.criterion.alpha
            );
        }
        let rep = embedded::run(&recipe, &opts).context("embedded default run")?;
        println!("Translations of the held-out test split (source / reference / model):");
        for (s, r, h) in &rep.examples {
            println!("  {s}\n  {r}\n  {h}\n");
        }
        if rep.bleu_before.is_finite() {
            println!("test BLEU before training: {:.2}", rep.bleu_before);
        }
        println!(
            "test BLEU after {} updates: {:.2} ({} sentences, best checkpoint {})",
            rep.summary.updates,
            rep.bleu_after,
            rep.test_sentences,
            rep.summary.best_dir.display()
        );
        return Ok(());
    }
    let summary = trainer::train(&recipe, &opts)?;
    println!(
        "trained {} updates ({} epochs); best valid BLEU {} at update {}; best: {}; last: {}{}",
        summary.updates,
        summary.epochs,
        summary
            .best_bleu
            .map(|b| format!("{b:.2}"))
            .unwrap_or_else(|| "-".into()),
        summary
            .best_update
            .map(|u| u.to_string())
            .unwrap_or_else(|| "-".into()),
        summary.best_dir.display(),
        summary.last_dir.display(),
        if summary.nan_skipped > 0 {
            format!("; {} updates skipped for NaN/inf loss", summary.nan_skipped)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A TOML basic string for `s`.
fn toml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
