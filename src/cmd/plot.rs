//! `rdrop plot`: training curves of one or more runs in one PNG (e.g. a baseline against R-Drop).

use rdrop_train::plot::{self, XAxis};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run directories (their output_dir, holding metrics.jsonl) or metrics.jsonl files.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(short, long, default_value = "curves.png", value_name = "FILE.png")]
    pub output: PathBuf,
    /// Horizontal axis: optimiser updates, or hours of training (wall time summed over resumes).
    #[arg(long = "x", value_enum, default_value_t = Axis::Updates)]
    pub x: Axis,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Axis {
    Updates,
    Wall,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let x = match args.x {
        Axis::Updates => XAxis::Updates,
        Axis::Wall => XAxis::Wall,
    };
    plot::plot_paths(&args.runs, x, &args.output)?;
    println!("wrote {}", args.output.display());
    Ok(())
}
