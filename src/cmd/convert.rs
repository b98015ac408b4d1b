//! `rdrop convert`: load a Marian model (hub id, Hugging Face directory, or a weights file such as a
//! zip-format `pytorch_model.bin`) and write it back as `config.json` + `model.safetensors`, with its
//! tokenizer and generation files, in the layout transformers' `from_pretrained` reads.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use rdrop_seq2seq::checkpoint;
use rdrop_train::error::Error;
use rdrop_train::output;

#[derive(clap::Args)]
pub struct Args {
    /// Model to read: a hub id (`org/name`, optionally `@revision`), a model directory, or a weights
    /// file inside one (its directory must hold config.json).
    #[arg(long)]
    pub model: String,
    /// Directory to create, outside the model's directory. An existing directory is used only if
    /// it is empty.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if an earlier `rdrop convert` or `rdrop average` wrote it (it holds
    /// .rdrop-output); any other non-empty directory is still refused.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let ckpt = checkpoint::locate(&args.model)?;
    let inputs = [ckpt.dir.clone()];
    // Before loading the weights: a refused output should be said at once.
    output::check_output(&args.out, args.force, &inputs)?;
    let cfg = checkpoint::load_config(&ckpt.dir)?;
    let mut tensors = checkpoint::load_tensors(&ckpt.weights, &cfg, DType::F32, &Device::Cpu)?;
    let ordered: Vec<_> = checkpoint::param_shapes(&cfg)?
        .into_iter()
        .filter_map(|(name, _)| tensors.remove(&name).map(|t| (name, t)))
        .collect();
    let n_params: usize = ordered.iter().map(|(_, t)| t.elem_count()).sum();
    let mut copied = Vec::new();
    output::write_output(&args.out, "convert", args.force, &inputs, |tmp| {
        checkpoint::save_tensors(tmp, &cfg, ordered)?;
        copied = copy_companions(&ckpt.dir, tmp)?;
        Ok(())
    })?;
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
fn copy_companions(from: &Path, to: &Path) -> rdrop_train::Result<Vec<String>> {
    let mut copied = Vec::new();
    for name in checkpoint::COMPANION_FILES {
        let src = from.join(name);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|source| Error::Io {
                path: src.clone(),
                source,
            })?;
            rdrop_train::checkpoint::write_file(to, name, &bytes)?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}
