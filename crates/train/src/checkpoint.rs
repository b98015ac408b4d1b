//! Atomic checkpoint directories: everything is written into a temporary sibling directory, each
//! file fsync'ed, then the directory is renamed into place. A crash during a save leaves the
//! previous checkpoints untouched; half-written temporaries are ignored and cleaned up later.
//!
//! Layout of `<output_dir>/checkpoints/update_<N>/` (and `<output_dir>/best/`):
//! `config.json`, `model.safetensors` (HF format), tokenizer files, `optimizer.safetensors`,
//! `trainer_state.json` ([`TrainerState`]), `recipe.toml` (the resolved recipe).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Environment variable for fault injection in tests: `RDROP_FAULT_SAVE=N` aborts the process in the
/// middle of the N-th checkpoint save of this process (after the model is written, before the rename),
/// as a kill would.
pub const FAULT_ENV: &str = "RDROP_FAULT_SAVE";

/// File names inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const RECIPE_FILE: &str = "recipe.toml";

/// Progress of a run: everything besides tensors that resuming needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser updates done.
    pub update: u64,
    /// Current epoch (0-based) and the index of the next batch in its plan.
    pub epoch: u64,
    pub next_batch: usize,
    /// The data shuffler's seed (the epoch plan is a function of seed and epoch).
    pub shuffle_seed: u64,
    /// State of the dropout generator (serialised by the model crate).
    pub dropout_rng: serde_json::Value,
    /// Best validation BLEU so far and the update that reached it.
    pub best_bleu: Option<f64>,
    pub best_update: Option<u64>,
    /// Validations since the best BLEU improved (early stopping).
    pub bad_validations: u64,
    /// Updates skipped for a NaN/inf loss: in total and in a row.
    pub nan_total: u64,
    pub nan_consecutive: u64,
    /// Target tokens trained on (original batch, before R-Drop's duplication).
    pub tokens_seen: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn fsync_path(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Called by writers between files: aborts here when fault injection asks for this save.
pub fn fault_point(save_no: u64) {
    if let Ok(n) = std::env::var(FAULT_ENV) {
        if n.trim().parse::<u64>().ok() == Some(save_no) {
            eprintln!("{FAULT_ENV}={n}: aborting in the middle of checkpoint save {save_no}");
            std::process::abort();
        }
    }
}

/// Writes a checkpoint directory atomically: `write` fills a fresh temporary directory (it gets the
/// path and the save number for [`fault_point`]), then files are fsync'ed and the directory renamed
/// to `dest`, replacing an older `dest` (through a `.old-` rename, so at every instant either the
/// old or the new directory is complete).
pub fn write_atomic<F>(dest: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path, u64) -> Result<()>,
{
    let save_no = SAVES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    // `Path::new("avg").parent()` is `Some("")`: the current directory.
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write(&tmp, save_no)?;
    for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
        let p = entry.map_err(io(&tmp))?.path();
        if p.is_file() {
            fsync_path(&p)?;
        }
    }
    fsync_path(&tmp)?;
    let old = parent.join(format!(".old-{name}"));
    if dest.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(dest, &old).map_err(io(dest))?;
    }
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    fsync_path(parent)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// A complete checkpoint directory, or the `.old-` copy left when a replacement was interrupted.
pub fn complete_dir(dest: &Path) -> Option<PathBuf> {
    if dest.join(STATE_FILE).is_file() {
        return Some(dest.to_path_buf());
    }
    let parent = dest.parent()?;
    let old = parent.join(format!(".old-{}", dest.file_name()?.to_string_lossy()));
    old.join(STATE_FILE).is_file().then_some(old)
}

/// Directory name of the periodic checkpoint after `update` updates.
pub fn update_dir_name(update: u64) -> String {
    format!("update_{update:08}")
}

/// Complete periodic checkpoints under `dir`, sorted by update.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = entry.map_err(io(dir))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(n) = name
            .strip_prefix("update_")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if p.join(STATE_FILE).is_file() {
            out.push((n, p));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes all but the last `keep` periodic checkpoints (0 = keep all) and stale temporaries.
pub fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(dir)?;
    if keep > 0 && all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(p).map_err(io(p))?;
        }
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = entry.map_err(io(dir))?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Temporaries of this process were renamed already; any left are from killed runs.
        if name.starts_with(".tmp-") {
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

/// Reads `trainer_state.json` of a checkpoint.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
        path,
        message: e.to_string(),
    })
}

/// Writes a JSON or text file inside a checkpoint being written.
pub fn write_file(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, contents).map_err(io(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_replace_and_listing() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoints");
        for u in [10u64, 20, 30] {
            write_atomic(&ck.join(update_dir_name(u)), |tmp, _| {
                let st = TrainerState {
                    update: u,
                    ..Default::default()
                };
                write_file(
                    tmp,
                    STATE_FILE,
                    serde_json::to_string(&st).unwrap().as_bytes(),
                )
            })
            .unwrap();
        }
        // A write that fails midway leaves the earlier checkpoints complete and is not listed.
        let err = write_atomic(&ck.join(update_dir_name(40)), |tmp, _| {
            write_file(tmp, "model.safetensors", b"partial")?;
            Err(Error::Other("disk full".into()))
        });
        assert!(err.is_err());
        let all = list_checkpoints(&ck).unwrap();
        assert_eq!(
            all.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![10, 20, 30]
        );
        prune(&ck, 2).unwrap();
        let all = list_checkpoints(&ck).unwrap();
        assert_eq!(all.iter().map(|x| x.0).collect::<Vec<_>>(), vec![20, 30]);
        assert_eq!(read_state(&all[1].1).unwrap().update, 30);
        // Replacing a directory keeps exactly one complete copy.
        let best = d.path().join("best");
        for u in [1u64, 2] {
            write_atomic(&best, |tmp, _| {
                let st = TrainerState {
                    update: u,
                    ..Default::default()
                };
                write_file(
                    tmp,
                    STATE_FILE,
                    serde_json::to_string(&st).unwrap().as_bytes(),
                )
            })
            .unwrap();
        }
        assert_eq!(read_state(&complete_dir(&best).unwrap()).unwrap().update, 2);
        assert!(!d.path().join(".old-best").exists());
    }
}
