//! Parameter averaging of the last N checkpoints (fairseq's `average_checkpoints.py`): every
//! tensor of `model.safetensors` is the mean over the checkpoints, accumulated in f64.

use crate::checkpoint;
use crate::error::{Error, Result};
use crate::output;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The last `n` complete checkpoints of a run (`dir` = the run's output_dir or its `checkpoints/`).
pub fn last_checkpoints(dir: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let ck = if dir.join("checkpoints").is_dir() {
        dir.join("checkpoints")
    } else {
        dir.to_path_buf()
    };
    let all = checkpoint::list_checkpoints(&ck)?;
    if all.is_empty() {
        return Err(Error::Other(format!(
            "no checkpoints (update_*/) under {}",
            ck.display()
        )));
    }
    if n == 0 || n > all.len() {
        return Err(Error::Other(format!(
            "--last {n}: {} holds {} checkpoint(s)",
            ck.display(),
            all.len()
        )));
    }
    Ok(all[all.len() - n..]
        .iter()
        .map(|(_, p)| p.clone())
        .collect())
}

/// Tokenizer files that must be byte-identical across the averaged checkpoints: parameters of
/// different vocabularies have the same shapes but mean different tokens.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "vocab.json",
    "source.spm",
    "target.spm",
    "target_vocab.json",
    "tokenizer_config.json",
];

/// `config.json` keys that change what the parameters compute without changing their shapes (or
/// that the shapes check would report less clearly).
const ARCH_KEYS: [&str; 20] = [
    "model_type",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "vocab_size",
    "decoder_vocab_size",
    "max_position_embeddings",
    "activation_function",
    "scale_embedding",
    "normalize_before",
    "share_encoder_decoder_embeddings",
    "tie_word_embeddings",
    "static_position_embeddings",
    "pad_token_id",
    "eos_token_id",
    "decoder_start_token_id",
];

/// Refuses checkpoints that do not share one tokenizer and one architecture, naming the two
/// directories and the file (and key) that differ.
fn check_compatible(dirs: &[PathBuf]) -> Result<()> {
    let Some((first, rest)) = dirs.split_first() else {
        return Ok(());
    };
    let read = |d: &Path, name: &str| -> Result<Option<Vec<u8>>> {
        let p = d.join(name);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path: p, source }),
        }
    };
    let differ = |d: &Path, what: &str| {
        Error::Other(format!(
            "cannot average {} with {}: {what}; averaging needs checkpoints of one tokenizer and architecture",
            d.display(),
            first.display()
        ))
    };
    for name in TOKENIZER_FILES {
        let want = read(first, name)?;
        for d in rest {
            let got = read(d, name)?;
            if got != want {
                let what = match (&want, &got) {
                    (Some(_), None) => format!("{name} is missing from {}", d.display()),
                    (None, _) => format!("{name} is only in {}", d.display()),
                    _ => format!("their {name} differ"),
                };
                return Err(differ(d, &what));
            }
        }
    }
    let config = |d: &Path| -> Result<Option<serde_json::Value>> {
        let Some(bytes) = read(d, "config.json")? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Checkpoint {
                path: d.join("config.json"),
                message: e.to_string(),
            })
    };
    if let Some(want) = config(first)? {
        for d in rest {
            let Some(got) = config(d)? else { continue };
            for key in ARCH_KEYS {
                if got.get(key) != want.get(key) {
                    let show = |v: Option<&serde_json::Value>| {
                        v.map(|v| v.to_string()).unwrap_or_else(|| "absent".into())
                    };
                    return Err(differ(
                        d,
                        &format!(
                            "config.json `{key}` is {} there and {} here",
                            show(got.get(key)),
                            show(want.get(key))
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What averaging reads, for [`output::check_output`]: the checkpoints, their `checkpoints/`
/// directory and the run directory above it.
fn inputs_of(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut inputs = Vec::new();
    for d in dirs {
        let mut add = |p: &Path| {
            if !inputs.iter().any(|q: &PathBuf| q == p) {
                inputs.push(p.to_path_buf());
            }
        };
        add(d);
        if let Some(ck) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            add(ck);
            if ck.file_name().is_some_and(|n| n == "checkpoints") {
                if let Some(run) = ck.parent().filter(|p| !p.as_os_str().is_empty()) {
                    add(run);
                }
            }
        }
    }
    inputs
}

/// Averages `model.safetensors` of `dirs` into the new directory `out` (with config and tokenizer
/// files of the last), under the rules of [`output::write_output`]: `force` replaces only an
/// earlier output of rdrop; an output inside the run is refused.
pub fn average(dirs: &[PathBuf], out: &Path, force: bool) -> Result<()> {
    let inputs = inputs_of(dirs);
    // Before minutes of loading: a refused output should be said at once.
    output::check_output(out, force, &inputs)?;
    check_compatible(dirs)?;
    let mut sum: HashMap<String, (Tensor, DType)> = HashMap::new();
    for (i, d) in dirs.iter().enumerate() {
        let path = d.join("model.safetensors");
        let tensors =
            candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| Error::Checkpoint {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if i > 0 && tensors.len() != sum.len() {
            return Err(Error::Checkpoint {
                path,
                message: format!(
                    "{} tensors, the first checkpoint has {}",
                    tensors.len(),
                    sum.len()
                ),
            });
        }
        for (name, t) in tensors {
            let dt = t.dtype();
            let t64 = t.to_dtype(DType::F64)?;
            match sum.get_mut(&name) {
                None if i == 0 => {
                    sum.insert(name, (t64, dt));
                }
                None => {
                    return Err(Error::Checkpoint {
                        path,
                        message: format!("{name} is not in the first checkpoint"),
                    })
                }
                Some((acc, _)) => {
                    if acc.dims() != t64.dims() {
                        return Err(Error::Checkpoint {
                            path,
                            message: format!("{name}: shape {:?} vs {:?}", t64.dims(), acc.dims()),
                        });
                    }
                    *acc = (&*acc + t64)?;
                }
            }
        }
    }
    let n = dirs.len() as f64;
    let mut avg = HashMap::new();
    for (name, (acc, dt)) in sum {
        avg.insert(name, (acc / n)?.to_dtype(dt)?);
    }
    let last = dirs
        .last()
        .ok_or_else(|| Error::Other("no checkpoints to average".into()))?;
    output::write_output(out, "average", force, &inputs, |tmp| {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        for entry in std::fs::read_dir(last).map_err(io(last))? {
            let p = entry.map_err(io(last))?.path();
            let name = p
                .file_name()
                .map(|x| x.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Optimiser moments and run progress do not belong to an averaged model; dot files
            // (a lock, a marker) belong to the directory they are in.
            if p.is_file()
                && !name.starts_with('.')
                && name != "model.safetensors"
                && name != checkpoint::OPTIMIZER_FILE
                && name != checkpoint::STATE_FILE
            {
                let bytes = std::fs::read(&p).map_err(io(&p))?;
                checkpoint::write_file(tmp, &name, &bytes)?;
            }
        }
        let dest = tmp.join("model.safetensors");
        candle_core::safetensors::save(&avg, &dest).map_err(|e| Error::Checkpoint {
            path: dest.clone(),
            message: format!("cannot write: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_three() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoints");
        for (u, x) in [(1u64, 1.0f32), (2, 2.0), (3, 6.0)] {
            let dir = ck.join(checkpoint::update_dir_name(u));
            std::fs::create_dir_all(&dir).unwrap();
            let mut m = HashMap::new();
            m.insert(
                "w".to_string(),
                Tensor::new(&[x, -x], &Device::Cpu).unwrap(),
            );
            candle_core::safetensors::save(&m, dir.join("model.safetensors")).unwrap();
            std::fs::write(dir.join(checkpoint::STATE_FILE), "{}").unwrap();
            std::fs::write(dir.join("config.json"), format!("{{\"u\":{u}}}")).unwrap();
        }
        let dirs = last_checkpoints(d.path(), 2).unwrap();
        // Outside the run: an output inside it is refused (see `output`).
        let o = tempfile::tempdir().unwrap();
        let out = o.path().join("avg");
        average(&dirs, &out, false).unwrap();
        let m =
            candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
        assert_eq!(m["w"].to_vec1::<f32>().unwrap(), vec![4.0, -4.0]);
        assert_eq!(
            std::fs::read_to_string(out.join("config.json")).unwrap(),
            "{\"u\":3}"
        );
        assert!(!out.join(checkpoint::STATE_FILE).exists());
        assert!(last_checkpoints(d.path(), 4)
            .unwrap_err()
            .to_string()
            .contains("holds 3"));
    }
}
