//! `rdrop train`: train or fine-tune a model from a TOML recipe, or (without one) run the embedded
//! default: a tiny model trained from scratch with R-Drop on a generated toy German→English corpus.

use anyhow::Context;
use rdrop_train::embedded;
use rdrop_train::recipe::{Recipe, ValidMetric};
use rdrop_train::trainer::{self, RunOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Recipe file (TOML). Without one, runs the embedded default (toy de→en, ~5 minutes on 2 cores).
    pub recipe: Option<PathBuf>,
    /// Override a recipe value, e.g. `--set criterion.alpha=0.7` (value parsed as TOML; repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", help_heading = "Recipe")]
    pub set: Vec<String>,
    /// Continue from the newest intact checkpoint in the recipe's output_dir (damaged newer ones
    /// are passed over with a warning).
    #[arg(long, help_heading = "Resume")]
    pub resume: bool,
    /// Continue from this checkpoint directory (e.g. runs/x/checkpoints/update_00004000).
    #[arg(long, value_name = "DIR", help_heading = "Resume")]
    pub resume_from: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N (overrides the recipe's `device`).
    #[arg(long, help_heading = "Recipe")]
    pub device: Option<String>,
    /// Print the resolved recipe (defaults filled in) and exit.
    #[arg(long, help_heading = "Recipe")]
    pub print_recipe: bool,
    /// Only errors and the final result.
    #[arg(long, short, help_heading = "Output")]
    pub quiet: bool,
    /// Time the phases of each update (batch, forward, loss, backward, optimizer), waiting for
    /// the device after each, and log their means in ms (`phase_ms` in metrics.jsonl). Slows GPU
    /// training a little: for finding where the time goes.
    #[arg(long, help_heading = "Output")]
    pub profile_phases: bool,
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
        resume_from: args.resume_from.clone(),
        progress: std::io::stderr().is_terminal(),
        quiet: args.quiet,
        stop: stop_on_signals()?,
        profile_phases: args.profile_phases,
        ..Default::default()
    };
    if args.recipe.is_none() {
        if !args.quiet {
            eprintln!(
                "No recipe given: running the embedded default (toy German→English corpus generated into {}, tiny model, R-Drop α {}).",
                recipe.output_dir.display(),
                recipe.criterion.alpha
            );
        }
        let rep = embedded::run(&recipe, &opts)
            .map_err(|e| stopped(e, &args))
            .context("embedded default run")?;
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
    let summary = trainer::train(&recipe, &opts).map_err(|e| stopped(e, &args))?;
    println!(
        "trained {} updates ({} epochs); best valid {} {} at update {}; best: {}; last: {}{}",
        summary.updates,
        summary.epochs,
        match summary.best_by {
            ValidMetric::Bleu => "BLEU",
            ValidMetric::Chrf => "chrF",
            ValidMetric::Loss => "loss",
            ValidMetric::Nll => "NLL",
        },
        summary
            .best_value
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

/// A run stopped by a signal exits at once with 128 + the signal's number (what a shell reports for
/// a killed job) and the command that continues it; any other error is returned.
fn stopped(e: rdrop_train::Error, args: &Args) -> rdrop_train::Error {
    if let rdrop_train::Error::Interrupted { signal, .. } = &e {
        let code = if signal == "SIGINT" { 130 } else { 143 };
        let again = match &args.recipe {
            Some(p) => format!("rdrop train {} --resume", p.display()),
            None => "rdrop train --resume".into(),
        };
        eprintln!("{e}: {again}");
        std::process::exit(code);
    }
    e
}

/// SIGINT and SIGTERM set a flag the training loop reads after each update (it then saves and
/// stops); a second signal ends the process at once, as Marian's `--sigterm save-and-exit` does.
#[cfg(unix)]
fn stop_on_signals() -> anyhow::Result<Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;
    let which = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&seen))?;
        signal_hook::flag::register(sig, Arc::clone(&seen))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&which), sig as usize)?;
    }
    Ok(Some(which))
}

#[cfg(not(unix))]
fn stop_on_signals() -> anyhow::Result<Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>> {
    Ok(None)
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
