//! Parameter averaging of the last N checkpoints (fairseq's `average_checkpoints.py`): every
//! tensor of `model.safetensors` is the mean over the checkpoints, accumulated in f64.

use crate::checkpoint;
use crate::error::{Error, Result};
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

/// Averages `model.safetensors` of `dirs` into `out` (with config and tokenizer files of the last).
pub fn average(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let mut sum: HashMap<String, (Tensor, DType)> = HashMap::new();
    for (i, d) in dirs.iter().enumerate() {
        let path = d.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
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
    checkpoint::write_atomic(out, |tmp, _| {
        for entry in std::fs::read_dir(last).map_err(|source| Error::Io {
            path: last.clone(),
            source,
        })? {
            let p = entry
                .map_err(|source| Error::Io {
                    path: last.clone(),
                    source,
                })?
                .path();
            let name = p
                .file_name()
                .map(|x| x.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Optimiser moments and run progress do not belong to an averaged model.
            if p.is_file()
                && name != "model.safetensors"
                && name != checkpoint::OPTIMIZER_FILE
                && name != checkpoint::STATE_FILE
            {
                std::fs::copy(&p, tmp.join(&name)).map_err(|source| Error::Io {
                    path: p.clone(),
                    source,
                })?;
            }
        }
        let dest = tmp.join("model.safetensors");
        candle_core::safetensors::save(&avg, &dest)?;
        Ok(())
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
        let out = d.path().join("avg");
        average(&dirs, &out).unwrap();
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
