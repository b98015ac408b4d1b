//! Output directories that a user names (`rdrop average --out`, `rdrop convert --out`): rdrop never
//! deletes or replaces a directory it did not create. A new directory is written (in a temporary
//! sibling, then renamed into place); an existing one is used only when it is empty, or replaced
//! with `--force` when it holds [`OUTPUT_MARKER`], which every directory written here gets. An
//! output inside an input of the command (or holding one) is refused: replacing it would delete
//! what is being read, as `--out` equal to the run once deleted the run's checkpoints.

use crate::checkpoint;
use crate::error::{Error, Result};
use std::path::{Component, Path, PathBuf};

/// The marker file in every directory `rdrop average` / `rdrop convert` write. Its first line
/// names the command; `--force` replaces only directories holding it.
pub const OUTPUT_MARKER: &str = ".rdrop-output";

/// Checks that `out` may be written by an rdrop command reading `inputs`: it must not be, lie
/// inside or contain an input; if it exists it must be an empty directory, or (with `force`) one
/// holding [`OUTPUT_MARKER`]. The error is one line naming the path, phrased for `--out`.
pub fn check_output(out: &Path, force: bool, inputs: &[PathBuf]) -> Result<()> {
    let refuse = |why: String| Err(Error::Other(format!("--out {} {why}", out.display())));
    let target = resolve(out);
    for input in inputs {
        let Ok(input_abs) = input.canonicalize() else {
            continue;
        };
        if target == input_abs {
            return refuse(format!(
                "is the input {}: choose a new directory",
                input.display()
            ));
        }
        if target.starts_with(&input_abs) {
            return refuse(format!(
                "is inside the input {}: choose a directory outside it",
                input.display()
            ));
        }
        if input_abs.starts_with(&target) {
            return refuse(format!(
                "holds the input {}: choose a directory outside it",
                input.display()
            ));
        }
    }
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                path: out.to_path_buf(),
                source,
            })
        }
    };
    if !meta.is_dir() {
        return refuse("already exists and is not a directory: choose a new directory".into());
    }
    let marker = out.join(OUTPUT_MARKER);
    if marker.is_file() {
        if force {
            return Ok(());
        }
        let by = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "rdrop".into());
        return refuse(format!(
            "already exists (written by {by}): pass --force to replace it, or choose a new directory"
        ));
    }
    let empty = std::fs::read_dir(out)
        .map_err(|source| Error::Io {
            path: out.to_path_buf(),
            source,
        })?
        .next()
        .is_none();
    if empty {
        return Ok(());
    }
    refuse(
        "already exists and was not written by rdrop average/convert: choose a new directory"
            .into(),
    )
}

/// Writes the output directory `out` of `rdrop <command>`: `write` fills a temporary sibling, the
/// marker is added, files are fsync'ed, [`check_output`] runs again (the directory may have
/// appeared meanwhile) and the result is put at `out` in one step. On failure nothing is left.
pub fn write_output<F>(
    out: &Path,
    command: &str,
    force: bool,
    inputs: &[PathBuf],
    write: F,
) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    check_output(out, force, inputs)?;
    checkpoint::build_and_install(
        out,
        |tmp| {
            write(tmp)?;
            checkpoint::write_file(
                tmp,
                OUTPUT_MARKER,
                format!(
                    "rdrop {command}\n\
                     This directory was written by `rdrop {command}`; `rdrop average` and \
                     `rdrop convert` replace it only with --force.\n"
                )
                .as_bytes(),
            )
        },
        || check_output(out, force, inputs),
    )
}

/// `p` as an absolute path with symlinks resolved as far as it exists; the rest (not there yet)
/// is appended lexically, so a new output can be compared with canonical input paths.
fn resolve(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut base = abs.as_path();
    let mut rest = Vec::new();
    while !base.exists() {
        match (base.file_name(), base.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                base = parent;
            }
            _ => break,
        }
    }
    let mut out = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    for name in rest.iter().rev() {
        out.push(name);
    }
    // `..` after a missing component never reached the filesystem: fold it lexically.
    let mut folded = PathBuf::new();
    for c in out.components() {
        match c {
            Component::ParentDir => {
                folded.pop();
            }
            Component::CurDir => {}
            c => folded.push(c),
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_x(text: &'static str) -> impl FnOnce(&Path) -> Result<()> {
        move |tmp| checkpoint::write_file(tmp, "x", text.as_bytes())
    }

    /// The rule itself, at library level: new and empty directories are written and marked, a
    /// marked one is replaced only with `force`, anything else (and anything overlapping an
    /// input) is refused and left as it was.
    #[test]
    fn writes_new_or_marked_directories_only() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        write_output(&out, "average", false, &[], write_x("1")).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join(OUTPUT_MARKER))
                .unwrap()
                .lines()
                .next(),
            Some("rdrop average")
        );
        let err = write_output(&out, "average", false, &[], write_x("2")).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        write_output(&out, "convert", true, &[], write_x("3")).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("x")).unwrap(), "3");

        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        write_output(&empty, "convert", false, &[], write_x("4")).unwrap();
        assert_eq!(std::fs::read_to_string(empty.join("x")).unwrap(), "4");

        let mine = d.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("notes.txt"), "keep").unwrap();
        for force in [false, true] {
            let err = write_output(&mine, "average", force, &[], write_x("5")).unwrap_err();
            assert!(
                err.to_string().contains("was not written by rdrop"),
                "{err}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
            "keep"
        );
        assert!(!mine.join("x").exists());

        let run = d.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        let inputs = [run.clone()];
        for bad in [
            run.clone(),
            run.join("avg"),
            d.path().join("run/./x/../avg"),
        ] {
            let err = write_output(&bad, "average", true, &inputs, write_x("6")).unwrap_err();
            assert!(err.to_string().contains("the input"), "{err}");
        }
        let err = write_output(d.path(), "average", true, &inputs, write_x("7")).unwrap_err();
        assert!(err.to_string().contains("holds the input"), "{err}");
        assert!(!run.join("avg").exists());
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
