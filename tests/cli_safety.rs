//! What rdrop must never do to files it did not write, and how it says what went wrong:
//! `average` and `convert` create a new directory or refuse (`--force` replaces only their own
//! marked outputs, never the run or model they read, never anyone else's folder); a second
//! `train` is kept out of a run directory in use; averaging refuses checkpoints of different
//! tokenizers; an OS error is printed once, with its path; a missing local path is reported as
//! such instead of being looked up on the hub.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fixtures, tiny_run, Sandbox};

/// A copy of the opus fixture model (without its reference outputs) at `name` in the sandbox.
fn model_copy(sb: &Sandbox, name: &str, skip: &[&str]) -> PathBuf {
    let dir = sb.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in common::MODEL_FILES.iter().filter(|f| !skip.contains(f)) {
        std::fs::copy(fixtures().join("models/opus").join(f), dir.join(f)).unwrap();
    }
    dir
}

/// A run directory as the trainer leaves it, without the minutes of training:
/// `checkpoints/update_N/` (the opus fixture plus a trainer_state.json) for each of `updates`,
/// `best/` and `metrics.jsonl`.
fn fake_run(sb: &Sandbox, run: &str, updates: &[u64]) -> PathBuf {
    for u in updates {
        let ck = model_copy(sb, &format!("{run}/checkpoints/update_{u:08}"), &[]);
        std::fs::write(ck.join("trainer_state.json"), format!("{{\"update\":{u}}}")).unwrap();
    }
    let best = model_copy(sb, &format!("{run}/best"), &[]);
    std::fs::write(best.join("trainer_state.json"), "{\"update\":2}").unwrap();
    sb.write(
        &format!("{run}/metrics.jsonl"),
        "{\"kind\":\"train\",\"update\":2}\n",
    );
    sb.path().join(run)
}

/// Every file under `dir` with its bytes: what a refused command must leave exactly as it was.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// `rdrop average --out runs/x` used to exit 0 after deleting the run's checkpoints, best/ and
/// metrics.jsonl (the output replaced wholesale), and `--out some/folder` deleted whatever was in
/// the folder. Every output that is, lies in or holds the run is refused, `--force` or not, and
/// so is a foreign non-empty folder; each refusal is one line naming the path and changes nothing.
/// What may be written: a new directory (marked), an empty one, and with `--force` an earlier
/// output of rdrop.
#[test]
fn average_never_replaces_the_run_or_a_foreign_directory() {
    let sb = Sandbox::new();
    let run = fake_run(&sb, "runs/x", &[2, 4, 6]);
    sb.write("notes/todo.txt", "keep me");
    let before = (snapshot(&run), snapshot(&sb.path().join("notes")));
    let average = |out: &str, force: bool| {
        sb.rdrop()
            .args([
                "average",
                "--checkpoints",
                "runs/x",
                "--last",
                "2",
                "--out",
                out,
            ])
            .args(force.then_some("--force"))
    };
    for out in [
        "runs/x",
        "runs/x/avg",
        "runs/x/best",
        "runs/x/checkpoints",
        "runs",
        "notes",
    ] {
        for force in [false, true] {
            let err = average(out, force).fails();
            assert!(
                err.contains(&format!("--out {out} ")) && err.trim().lines().count() == 1,
                "--out {out} (force {force}): {err}"
            );
        }
    }
    let err = average("notes", true).fails();
    assert!(err.contains("was not written by rdrop"), "{err}");
    assert!(
        before == (snapshot(&run), snapshot(&sb.path().join("notes"))),
        "a refused average changed files"
    );

    average("avg", false).ok();
    let marker = std::fs::read_to_string(sb.path().join("avg/.rdrop-output")).unwrap();
    assert_eq!(marker.lines().next(), Some("rdrop average"));
    assert!(sb.path().join("avg/model.safetensors").is_file());
    let err = average("avg", false).fails();
    assert!(err.contains("--force"), "{err}");
    average("avg", true).ok();
    std::fs::create_dir(sb.path().join("empty")).unwrap();
    average("empty", false).ok();
    assert!(sb.path().join("empty/model.safetensors").is_file());
    assert!(
        before.0 == snapshot(&run),
        "writing outputs changed the run"
    );
}

/// `rdrop convert --out DIR` used to write into any existing directory, replacing its
/// config.json and model.safetensors (also the model's own directory, or a trainer checkpoint).
/// Now the same rule as `average`: new, empty or (with --force) rdrop's own; never the input.
#[test]
fn convert_writes_only_new_or_its_own_directories() {
    let sb = Sandbox::new();
    let model = model_copy(&sb, "m", &[]);
    sb.write("theirs/config.json", "{\"mine\": true}");
    let before = (snapshot(&model), snapshot(&sb.path().join("theirs")));
    let convert = |out: &str, force: bool| {
        sb.rdrop()
            .args(["convert", "--model", "m", "--out", out])
            .args(force.then_some("--force"))
    };
    for out in ["theirs", "m", "m/converted", "."] {
        for force in [false, true] {
            let err = convert(out, force).fails();
            assert!(
                err.contains(&format!("--out {out} ")) && err.trim().lines().count() == 1,
                "--out {out} (force {force}): {err}"
            );
        }
    }
    assert!(
        before == (snapshot(&model), snapshot(&sb.path().join("theirs"))),
        "a refused convert changed files"
    );

    convert("out", false).ok();
    assert!(sb.path().join("out/.rdrop-output").is_file());
    assert!(sb.path().join("out/model.safetensors").is_file());
    assert!(convert("out", false).fails().contains("--force"));
    convert("out", true).ok();
}

/// Kills the background run however the test ends, so a failed assertion leaves no trainer behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two `rdrop train` on one output_dir used to run side by side, overwriting each other's
/// checkpoints, best/ and metrics.jsonl. While one trains, a second (fresh or --resume) must stop
/// at once with the lock message, and the first must keep running.
#[test]
fn a_second_train_on_a_run_in_use_is_refused() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    let log = sb.path().join("first.log");
    let mut first = KillOnDrop(
        sb.rdrop()
            .args([
                "train",
                "tiny.toml",
                "--set",
                "training.max_updates=1000000",
                "--set",
                "checkpoint.keep_last=2",
            ])
            .spawn(&log),
    );
    let started = Instant::now();
    // metrics.jsonl is opened after the lock is taken: once it exists, the run holds the lock.
    while !sb.path().join("run/metrics.jsonl").exists() {
        if let Some(status) = first.0.try_wait().unwrap() {
            panic!(
                "the first run ended ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the first run did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for resume in [false, true] {
        let err = sb
            .rdrop()
            .args(["train", "tiny.toml", "--set", "training.max_updates=2"])
            .args(resume.then_some("--resume"))
            .fails();
        assert!(
            err.contains("run is in use by another rdrop train (lock ")
                && err.contains("run/.lock held): wait for it or choose another output_dir")
                && err.trim().lines().count() == 1,
            "resume {resume}: {err}"
        );
    }
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the refused runs must not stop the first"
    );
}

/// Averaging used to mix checkpoints whose tokenizers differ (same shapes, so nothing failed)
/// and keep the last one's tokenizer: a model whose rows mean other tokens. It must be an error
/// naming both checkpoints and the file; likewise for a differing architecture key.
#[test]
fn average_refuses_checkpoints_of_different_tokenizers() {
    let sb = Sandbox::new();
    let run = fake_run(&sb, "run", &[2, 4]);
    let (a, b) = (
        run.join("checkpoints/update_00000002"),
        run.join("checkpoints/update_00000004"),
    );
    // Same size, two tokens' ids swapped: another tokenizer.
    let vocab_path = b.join("vocab.json");
    let mut vocab: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&vocab_path).unwrap()).unwrap();
    let keys: Vec<String> = vocab.keys().take(2).cloned().collect();
    let (x, y) = (vocab[&keys[0]].clone(), vocab[&keys[1]].clone());
    vocab.insert(keys[0].clone(), y);
    vocab.insert(keys[1].clone(), x);
    std::fs::write(&vocab_path, serde_json::to_string(&vocab).unwrap()).unwrap();
    let average = || {
        sb.rdrop()
            .args([
                "average",
                "--checkpoints",
                "run",
                "--last",
                "2",
                "--out",
                "avg",
            ])
            .fails()
    };
    let err = average();
    for want in ["update_00000002", "update_00000004", "vocab.json"] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!sb.path().join("avg").exists());

    std::fs::copy(a.join("vocab.json"), &vocab_path).unwrap();
    let cfg = std::fs::read_to_string(b.join("config.json")).unwrap();
    std::fs::write(b.join("config.json"), cfg.replace("\"swish\"", "\"relu\"")).unwrap();
    let err = average();
    assert!(
        err.contains("update_00000004") && err.contains("activation_function"),
        "{err}"
    );
    assert!(!sb.path().join("avg").exists());
}

/// Every I/O error used to print the OS message twice (`... (os error 2): ... (os error 2)`): the
/// error types put their source in the message and also reported it as the source. Once, with
/// the path, for a missing BLEU file, a model directory without vocab.json, a missing corpus.
#[test]
fn io_errors_say_the_os_error_once_with_the_path() {
    let sb = Sandbox::new();
    let once = |err: &str, path: &str| {
        assert_eq!(err.matches("os error 2").count(), 1, "{err}");
        assert!(err.contains(path), "{path}: {err}");
    };
    sb.write("hyp.txt", "a\n");
    let err = sb
        .rdrop()
        .args(["bleu", "missing.txt", "-i", "hyp.txt"])
        .fails();
    once(&err, "missing.txt");

    model_copy(&sb, "novocab", &["vocab.json"]);
    let err = sb
        .rdrop()
        .args(["translate", "--model", "novocab"])
        .stdin("Hallo\n")
        .fails();
    once(&err, "novocab/vocab.json");

    tiny_run(&sb, "");
    let err = sb
        .rdrop()
        .args([
            "train",
            "tiny.toml",
            "--set",
            "data.train.source=data/missing.de",
        ])
        .fails();
    once(&err, "data/missing.de");
}

/// `--model runs/nope` (a directory that is not there) used to be asked of the hub and reported
/// as a model missing from the hub cache. Anything shaped like a path must say "no such
/// directory" (or file) in one line; a real hub id still goes to the hub code (here the offline
/// cache, which does not have it).
#[test]
fn missing_local_paths_are_not_looked_up_on_the_hub() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path().join("runs")).unwrap();
    for (model, want) in [
        ("runs/nope", "no such directory: runs/nope"),
        ("./nope", "no such directory: ./nope"),
        ("a/b/c", "no such directory: a/b/c"),
        ("nope/", "no such directory: nope/"),
        ("pytorch_model.bin", "no such file: pytorch_model.bin"),
    ] {
        let errs = [
            sb.rdrop()
                .args(["translate", "--model", model])
                .stdin("Hallo\n")
                .fails(),
            sb.rdrop()
                .args(["convert", "--model", model, "--out", "out"])
                .fails(),
        ];
        for err in errs {
            assert!(
                err.contains(want)
                    && !err.contains("local cache")
                    && !err.contains("hub id")
                    && err.trim().lines().count() == 1,
                "{model}: {err}"
            );
        }
    }
    for model in ["tiny-org/absent", "tiny-org/absent@main"] {
        let err = sb
            .rdrop()
            .args(["convert", "--model", model, "--out", "out"])
            .fails();
        assert!(err.contains("not in the local cache"), "{model}: {err}");
    }
}
