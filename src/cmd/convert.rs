//! `rdrop convert`: load a Marian model (hub id, Hugging Face directory, or a weights file such as a
//! zip-format `pytorch_model.bin`) and write it back as `config.json` + `model.safetensors`, with its
//! tokenizer and generation files, in the layout transformers' `from_pretrained` reads.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device};
use rdrop_seq2seq::checkpoint;

#[derive(clap::Args)]
pub struct Args {
    /// Model to read: a hub id (`org/name`, optionally `@revision`), a model directory, or a weights
    /// file inside one (its directory must hold config.json).
    #[arg(long)]
    pub model: String,
    /// Directory to write (created if missing; existing files of the same names are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ckpt = checkpoint::locate(&args.model)?;
    let cfg = checkpoint::load_config(&ckpt.dir)?;
    let mut tensors = checkpoint::load_tensors(&ckpt.weights, &cfg, DType::F32, &Device::Cpu)?;
    let ordered: Vec<_> = checkpoint::param_shapes(&cfg)?
        .into_iter()
        .filter_map(|(name, _)| tensors.remove(&name).map(|t| (name, t)))
        .collect();
    let n_params: usize = ordered.iter().map(|(_, t)| t.elem_count()).sum();
    checkpoint::save_tensors(&args.out, &cfg, ordered)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let copied = copy_companions(&ckpt.dir, &args.out)?;
    eprintln!(
        "wrote {} (config.json, model.safetensors: {n_params} parameters from {}){}",
        args.out.display(),
        ckpt.weights.display(),
        if copied.is_empty() {
            String::new()
        } else {
            format!("; copied {}", copied.join(", "))
        }
    );
    Ok(())
}

/// Copies the tokenizer and generation files present in `from` to `to`; returns their names.
fn copy_companions(from: &Path, to: &Path) -> anyhow::Result<Vec<String>> {
    let same_dir = match (from.canonicalize(), to.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let mut copied = Vec::new();
    if same_dir {
        return Ok(copied);
    }
    for name in checkpoint::COMPANION_FILES {
        let src = from.join(name);
        if src.is_file() {
            let bytes =
                std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            checkpoint::write_atomic(&to.join(name), &bytes)?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}
