//! `rdrop bleu` (not yet built).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`rdrop bleu` is not available yet")
}
