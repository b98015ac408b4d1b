//! `rdrop average`: average the parameters of the last N checkpoints of a training run.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The run's output_dir (or its checkpoints/ directory).
    #[arg(long)]
    pub checkpoints: PathBuf,
    /// How many of the latest checkpoints to average.
    #[arg(long, default_value_t = 5)]
    pub last: usize,
    /// Output directory to create (HF format: config.json, model.safetensors, tokenizer files),
    /// outside the run. An existing directory is used only if it is empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if an earlier `rdrop average` or `rdrop convert` wrote it (it holds
    /// .rdrop-output); any other non-empty directory is still refused.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dirs = rdrop_train::average::last_checkpoints(&args.checkpoints, args.last)?;
    rdrop_train::average::average(&dirs, &args.out, args.force)?;
    println!(
        "averaged {} checkpoints into {}:",
        dirs.len(),
        args.out.display()
    );
    for d in &dirs {
        println!("  {}", d.display());
    }
    Ok(())
}
