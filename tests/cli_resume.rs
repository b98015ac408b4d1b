//! Stopping and resuming `rdrop train` without losing work: a signal saves and stops, SIGKILL at
//! any moment (saves included) leaves a resumable run, `--resume` passes over damaged checkpoints
//! and refuses a recipe that changed the model, and recipe values out of range are refused.

mod common;

use common::{tiny_run, Sandbox};
use std::path::Path;
use std::time::{Duration, Instant};

fn checkpoints(sb: &Sandbox) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(sb.path().join("run/checkpoints"))
        .map(|rd| {
            rd.filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_prefix("update_")?.parse().ok()?;
                e.path().join("trainer_state.json").is_file().then_some(n)
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn train_records(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains("\"train\"")).count())
        .unwrap_or(0)
}

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid}");
}

/// Waits until the run has logged `n` training records (it is then inside the update loop).
fn wait_for_updates(sb: &Sandbox, child: &mut std::process::Child, n: usize) {
    let t0 = Instant::now();
    while train_records(&sb.path().join("run")) < n {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("training ended before {n} updates: {st}");
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_saves_a_checkpoint_and_says_how_to_resume() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    // No periodic checkpoint before the signal: whatever is saved, the signal saved.
    let long = [
        "--set",
        "training.max_updates=100000",
        "--set",
        "training.log_every=1",
        "--set",
        "checkpoint.every_updates=100000",
    ];
    let log = sb.path().join("train.log");
    let mut child = sb
        .rdrop()
        .args(["train", "tiny.toml"])
        .args(long)
        .spawn(&log);
    wait_for_updates(&sb, &mut child, 3);
    signal(child.id(), "-TERM");
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("stopped by SIGTERM after update")
            && stderr.contains("rdrop train tiny.toml --resume"),
        "{stderr}"
    );
    let saved = checkpoints(&sb);
    assert_eq!(saved.len(), 1, "{saved:?}");
    let n = saved[0];
    assert!(n >= 3, "{n}");
    // The budget may change on resume; the run continues from the saved update.
    let out = sb
        .rdrop()
        .args(["train", "tiny.toml", "--resume"])
        .args(["--set", &format!("training.max_updates={}", n + 2)])
        .ok();
    assert!(out.contains(&format!("trained {} updates", n + 2)), "{out}");
    let recipe = std::fs::read_to_string(
        sb.path()
            .join(format!("run/checkpoints/update_{:08}/recipe.toml", n + 2)),
    )
    .unwrap();
    assert!(
        recipe.contains(&format!("max_updates = {}", n + 2)),
        "{recipe}"
    );
}

#[test]
fn repeated_sigkill_during_saves_never_loses_the_run() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    // A checkpoint after every update: most kills land in or next to a save.
    let args = [
        "--set",
        "training.max_updates=40",
        "--set",
        "training.log_every=1",
        "--set",
        "checkpoint.every_updates=1",
        "--set",
        "checkpoint.keep_last=2",
    ];
    let mut killed_after = Vec::new();
    for i in 0..6u64 {
        let resume = !checkpoints(&sb).is_empty();
        let mut cmd = sb.rdrop().args(["train", "tiny.toml"]).args(args);
        if resume {
            cmd = cmd.args(["--resume"]);
        }
        let mut child = cmd.spawn(&sb.path().join(format!("kill-{i}.log")));
        let before = train_records(&sb.path().join("run"));
        let t0 = Instant::now();
        // Into the update loop, then a varying delay so kills fall at different points of a save.
        while train_records(&sb.path().join("run")) <= before
            && t0.elapsed() < Duration::from_secs(60)
        {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(3 + 7 * i));
        let _ = child.kill();
        let _ = child.wait();
        killed_after.push(checkpoints(&sb));
    }
    let out = sb
        .rdrop()
        .args(["train", "tiny.toml", "--resume"])
        .args(args)
        .ok();
    assert!(
        out.contains("trained 40 updates"),
        "{out} after {killed_after:?}"
    );
    assert_eq!(checkpoints(&sb), vec![39, 40]);
    assert!(
        !std::fs::read_dir(sb.path().join("run/checkpoints"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp-")),
        "temporaries of killed saves are cleaned up"
    );
}

#[test]
fn resume_passes_over_a_truncated_checkpoint_and_names_garbage() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    sb.rdrop().args(["train", "tiny.toml"]).ok();
    assert_eq!(checkpoints(&sb), vec![2, 4, 6]);
    let newest = sb
        .path()
        .join("run/checkpoints/update_00000006/model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let out = sb
        .rdrop()
        .args([
            "train",
            "tiny.toml",
            "--resume",
            "--set",
            "training.max_updates=8",
        ])
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: checkpoint")
            && stderr.contains("update_00000006")
            && stderr.contains("model.safetensors")
            && stderr.contains("resuming from")
            && stderr.contains("update_00000004"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("trained 8 updates"));

    // --resume-from: a named checkpoint that is damaged is an error naming the file.
    let opt = sb
        .path()
        .join("run/checkpoints/update_00000002/optimizer.safetensors");
    std::fs::write(&opt, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    let err = sb
        .rdrop()
        .args([
            "train",
            "tiny.toml",
            "--resume-from",
            "run/checkpoints/update_00000002",
        ])
        .fails();
    assert!(
        err.contains("update_00000002/optimizer.safetensors") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn resume_refuses_a_changed_architecture_and_records_budget_changes() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    sb.rdrop().args(["train", "tiny.toml"]).ok();
    let err = sb
        .rdrop()
        .args([
            "train",
            "tiny.toml",
            "--resume",
            "--set",
            "model.arch.d_model=32",
        ])
        .args(["--set", "training.max_updates=8"])
        .fails();
    assert!(
        err.contains("model.arch.d_model (16 -> 32)") && !err.contains("max_updates"),
        "{err}"
    );
    // Resuming from an explicit earlier checkpoint continues from there.
    let out = sb
        .rdrop()
        .args([
            "train",
            "tiny.toml",
            "--resume-from",
            "run/checkpoints/update_00000002",
        ])
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("update 2,"), "{stderr}");
}

#[test]
fn out_of_range_recipe_values_and_oversize_pairs() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    for set in [
        "schedule.warmup_init_lr=-5",
        "optimizer.weight_decay=-1",
        "optimizer.clip_norm=-1",
        "model.arch.init_std=-0.1",
    ] {
        let err = sb
            .rdrop()
            .args(["train", "tiny.toml", "--set", set])
            .fails();
        let key = set.split('=').next().unwrap();
        assert!(
            err.contains(key) && err.contains("tiny.toml"),
            "{set}: {err}"
        );
    }
    // A pair longer than the whole batch budget: counted as skipped, or an error naming its line.
    let out = sb
        .rdrop()
        .args(["train", "tiny.toml", "--set", "batching.max_tokens=30"])
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("longer than batching.max_tokens"),
        "{stderr}"
    );
    let err = sb
        .rdrop()
        .args(["train", "tiny.toml", "--set", "batching.max_tokens=30"])
        .args([
            "--set",
            "batching.oversize=error",
            "--set",
            "output_dir=\"run2\"",
        ])
        .fails();
    assert!(
        err.contains("data/train.de:") && err.contains("exceeds batching.max_tokens = 30"),
        "{err}"
    );
    // A vocabulary the corpus cannot fill is a warning with the size reached.
    let out = sb
        .rdrop()
        .args(["train", "tiny.toml", "--set", "tokenizer.vocab_size=100000"])
        .args(["--set", "output_dir=\"run3\""])
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: tokenizer.vocab_size = 100000 but the training text yields only"),
        "{stderr}"
    );
}
