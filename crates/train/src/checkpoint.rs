//! Atomic checkpoint directories: everything is written into a temporary sibling directory, each
//! file fsync'ed, then the directory is renamed into place (swapped with the previous one in one
//! step where the kernel allows it). A crash during a save leaves the previous checkpoints
//! untouched; half-written temporaries are ignored and cleaned up later. [`lock_run_dir`] keeps a
//! second trainer out of a run directory in use.
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
/// AdamW moments and step count ([`crate::optim::AdamW::save`]).
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The run's recipe, every value spelled out; `--resume` checks the model and data against it.
pub const RECIPE_FILE: &str = "recipe.toml";

/// Progress of a run: everything besides tensors that resuming needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser updates done.
    pub update: u64,
    /// Current epoch (0-based) and the index of the next batch in its plan.
    pub epoch: u64,
    /// Index of the next batch within the current epoch's plan.
    pub next_batch: usize,
    /// The data shuffler's seed (the epoch plan is a function of seed and epoch).
    pub shuffle_seed: u64,
    /// Where the dropout generator stands (absent only before the first save).
    pub dropout_rng: Option<rdrop_seq2seq::dropout::RngState>,
    /// Validation BLEU of the best checkpoint so far (by `validation.best_by`) and its update.
    pub best_bleu: Option<f64>,
    /// Update at which the best checkpoint was saved.
    pub best_update: Option<u64>,
    /// Validations since the best BLEU improved (early stopping).
    pub bad_validations: u64,
    /// Updates skipped for a NaN/inf loss: in total and in a row.
    pub nan_total: u64,
    /// Updates skipped in a row just now (reset by a finite update).
    pub nan_consecutive: u64,
    /// Target tokens trained on (original batch, before R-Drop's duplication).
    pub tokens_seen: u64,
    /// Wall-clock seconds the run has spent up to this state, summed over resumes (older
    /// checkpoints lack it: 0).
    #[serde(default)]
    pub wall_seconds: f64,
    /// What the training set was when the run started ([`crate::resume::data_fingerprint`]).
    #[serde(default)]
    pub data_fingerprint: Option<String>,
    /// The `validation.best_by` metric's value at the best checkpoint.
    #[serde(default)]
    pub best_value: Option<f64>,
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
/// path and the save number for [`fault_point`]), then files are fsync'ed and the directory is put
/// at `dest`, replacing an older `dest` so that at every instant one of them is complete there (see
/// [`install_dir`]). On any failure the temporary directory is removed and the error names the file
/// that could not be written, synced or renamed.
///
/// `dest` is replaced wholesale: this is for directories the trainer owns (its checkpoints and
/// `best/`). Output directories a user names go through [`crate::output::write_output`].
pub fn write_atomic<F>(dest: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path, u64) -> Result<()>,
{
    let save_no = SAVES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    build_and_install(dest, |tmp| write(tmp, save_no), || Ok(()))
}

/// `Path::new("avg").parent()` is `Some("")`: the current directory.
pub(crate) fn parent_dir(dest: &Path) -> &Path {
    dest.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Fills a temporary sibling of `dest` with `fill`, makes it durable, runs `ready` (a last check
/// before anything at `dest` changes) and installs it at `dest`. Whatever fails, the temporary
/// directory does not outlive the call (short of a kill, which [`prune`] cleans up after).
pub(crate) fn build_and_install(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<()>,
    ready: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let parent = parent_dir(dest);
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Other(format!("{}: not a directory name", dest.display())))?;
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = fill(&tmp)
        .and_then(|()| sync_dir_files(&tmp))
        .and_then(|()| ready())
        .and_then(|()| install_dir(&tmp, dest));
    if result.is_err() {
        // A full disk must not also keep the half-written copy that filled it; failing to remove
        // it must not hide the error that matters.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// fsyncs every file directly in `dir`, then `dir` itself.
fn sync_dir_files(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = entry.map_err(io(dir))?.path();
        if p.is_file() {
            fsync_path(&p)?;
        }
    }
    fsync_path(dir)
}

/// Puts the complete directory `tmp` at `dest` (a sibling). A previous `dest` is swapped out in
/// one step where the kernel can (Linux `renameat2(RENAME_EXCHANGE)`), so `dest` never goes
/// missing, and then removed. Elsewhere, or on a filesystem without the exchange, it is renamed to
/// `.old-<name>` first: a kill between the two renames leaves that copy, which [`complete_dir`]
/// accepts.
fn install_dir(tmp: &Path, dest: &Path) -> Result<()> {
    let parent = parent_dir(dest);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let old = parent.join(format!(".old-{name}"));
    if dest.exists() {
        match exchange(tmp, dest) {
            Ok(()) => {
                fsync_path(parent)?;
                // `tmp` now names the previous `dest`.
                std::fs::remove_dir_all(tmp).map_err(io(tmp))?;
                return remove_stale_old(&old);
            }
            Err(e) if !exchange_unsupported(&e) => {
                return Err(Error::Io {
                    path: dest.to_path_buf(),
                    source: e,
                })
            }
            Err(_) => {}
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(dest, &old).map_err(io(dest))?;
    }
    std::fs::rename(tmp, dest).map_err(io(dest))?;
    fsync_path(parent)?;
    remove_stale_old(&old)
}

/// Removes the `.old-` copy of a replacement (this one, or an interrupted earlier one): `dest`
/// is complete again.
fn remove_stale_old(old: &Path) -> Result<()> {
    if old.exists() {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(())
}

/// Swaps the directory entries `a` and `b` atomically (both must exist).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // The raw syscall rather than glibc's wrapper: the wrapper needs glibc 2.28, the syscall only
    // a 3.15 kernel (older ones answer ENOSYS, which falls back).
    // SAFETY: `a` and `b` are NUL-terminated and outlive the call; AT_FDCWD resolves relative
    // paths against the working directory, as rename(2) does.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The exchange is not available here (kernel, filesystem or platform): use the two renames.
fn exchange_unsupported(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return true;
    }
    e.kind() == std::io::ErrorKind::Unsupported
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

/// The lock file of a run directory ([`lock_run_dir`]).
pub const LOCK_FILE: &str = ".lock";

/// Exclusive hold on a run directory; released when dropped (or when the process dies, however it
/// dies: the kernel drops the lock with the last open descriptor).
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RunLock {
    file: File,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// Locks `<dir>/.lock` for this process, so two trainers never write the same checkpoints,
/// `best/` and `metrics.jsonl`. Fails at once, with a one-line message, when another process
/// holds it. The file stays after the run: removing it would let a third process lock a new file
/// while the second still holds the old one.
pub fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock { file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Other(format!(
            "{} is in use by another rdrop train (lock {} held): wait for it or choose another output_dir",
            dir.display(),
            path.display()
        ))),
        // A filesystem without locks (some network mounts) must not stop training: run unlocked.
        Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
            Ok(RunLock { file })
        }
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
    }
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

/// Removes the `.tmp-*` directories directly under `dir` (left by killed saves).
pub fn remove_temporaries(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = entry.map_err(io(dir))?.path();
        let stale = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"));
        if stale && p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

/// Removes all but the last `keep` periodic checkpoints (0 = keep all) and stale temporaries.
pub fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list_checkpoints(dir)?;
    if keep > 0 && all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            std::fs::remove_dir_all(p).map_err(io(p))?;
        }
    }
    // Temporaries of this process were renamed already; any left are from killed runs.
    remove_temporaries(dir)
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

    fn state_writer(update: u64) -> impl FnOnce(&Path, u64) -> Result<()> {
        move |tmp, _| {
            let st = TrainerState {
                update,
                ..Default::default()
            };
            write_file(
                tmp,
                STATE_FILE,
                serde_json::to_string(&st).unwrap().as_bytes(),
            )
        }
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-") || n.starts_with(".old-"))
            .collect()
    }

    /// `best/` used to be replaced by two renames (dest -> .old-best, tmp -> dest): a kill between
    /// them left no `best/`. The exchange swaps both names in one step, so a reader polling
    /// `best/` while it is replaced over and over never finds it missing, and each replacement
    /// leaves only the new content (no `.old-`/`.tmp-` copy). With the two renames the poller
    /// catches the gap within a few hundred replacements.
    #[test]
    fn replacing_a_directory_swaps_it_in_one_step() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for (dir, text) in [(&a, "a"), (&b, "b")] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("x"), text).unwrap();
        }
        match exchange(&a, &b) {
            Ok(()) => {
                assert_eq!(std::fs::read_to_string(a.join("x")).unwrap(), "b");
                assert_eq!(std::fs::read_to_string(b.join("x")).unwrap(), "a");
            }
            Err(e) if exchange_unsupported(&e) => {
                eprintln!("skipping: this filesystem has no RENAME_EXCHANGE ({e}); the fallback renames are used");
                return;
            }
            Err(e) => panic!("exchange failed: {e}"),
        }

        let best = d.path().join("best");
        write_atomic(&best, state_writer(0)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let (best, stop) = (best.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut missing = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if std::fs::symlink_metadata(&best).is_err() {
                        missing += 1;
                    }
                }
                missing
            })
        };
        for u in 1..=400u64 {
            write_atomic(&best, state_writer(u)).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            poller.join().unwrap(),
            0,
            "best/ went missing during a replacement"
        );
        assert_eq!(read_state(&best).unwrap().update, 400);
        assert_eq!(leftovers(d.path()), Vec::<String>::new());
    }

    /// A full disk during a save used to leave the `.tmp-*` directory that filled it, and nothing
    /// said which file failed. The writer's I/O error must come back naming the file, with the
    /// temporary gone and no `dest` created.
    #[test]
    fn a_failed_write_removes_the_temporary_and_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("checkpoints").join(update_dir_name(8));
        let mut failed = PathBuf::new();
        let err = write_atomic(&dest, |tmp, _| {
            write_file(tmp, STATE_FILE, b"{}")?;
            failed = tmp.join("model.safetensors");
            Err(Error::Io {
                path: failed.clone(),
                source: std::io::ErrorKind::StorageFull.into(),
            })
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&failed.display().to_string()), "{msg}");
        assert!(!dest.exists());
        assert_eq!(
            leftovers(&d.path().join("checkpoints")),
            Vec::<String>::new()
        );
    }

    /// Two trainers in one run directory overwrite each other's checkpoints: the second must be
    /// refused while the first holds the lock, with the message the CLI prints, and admitted
    /// once the first lock is dropped. (flock conflicts between two opens even in one process.)
    #[test]
    fn run_dir_lock_is_exclusive_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let first = lock_run_dir(d.path()).unwrap();
        let msg = lock_run_dir(d.path()).unwrap_err().to_string();
        let want = format!(
            "{} is in use by another rdrop train (lock {} held): wait for it or choose another output_dir",
            d.path().display(),
            d.path().join(LOCK_FILE).display()
        );
        assert_eq!(msg, want);
        drop(first);
        let _again = lock_run_dir(d.path()).unwrap();
    }
}
