//! `rdrop train` and `rdrop average` from the command line: recipe errors name the key and the file,
//! bad corpora name the file and line, skips are counted, a killed save keeps the previous
//! checkpoint and `--resume` continues, averaging writes a model.

mod common;

use common::{tiny_run, Sandbox};

#[test]
fn unknown_recipe_key_names_the_key_and_the_file() {
    let sb = Sandbox::new();
    sb.write("bad.toml", "[optimizer]\nlearning_rate = 0.1\n");
    let err = sb.rdrop().args(["train", "bad.toml"]).fails();
    assert!(
        err.contains("bad.toml") && err.contains("learning_rate"),
        "{err}"
    );
    let err = sb
        .rdrop()
        .args(["train", "--set", "optimiser.lr=1", "--print-recipe"])
        .fails();
    assert!(err.contains("optimiser") && err.contains("--set"), "{err}");
}

#[test]
fn print_recipe_shows_defaults_and_overrides() {
    let sb = Sandbox::new();
    let out = sb
        .rdrop()
        .args(["train", "--print-recipe", "--set", "criterion.alpha=0.5"])
        .ok();
    assert!(out.contains("alpha = 0.5"), "{out}");
    assert!(
        out.contains("[optimizer]") && out.contains("beta2 = 0.98"),
        "{out}"
    );
}

#[test]
fn misaligned_and_invalid_utf8_corpora_are_named() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    sb.write("data/short.en", "one\ntwo\n");
    let err = sb
        .rdrop()
        .args([
            "train",
            "tiny.toml",
            "--set",
            "data.train.target=data/short.en",
        ])
        .fails();
    assert!(
        err.contains("data/train.de has 120 lines") && err.contains("data/short.en has 2"),
        "{err}"
    );
    sb.write("data/bad.de", b"gut\nschl\xe4cht\n");
    sb.write("data/bad.en", "good\nbad\n");
    let err = sb
        .rdrop()
        .args([
            "train",
            "tiny.toml",
            "--set",
            "data.train.source=data/bad.de",
            "--set",
            "data.train.target=data/bad.en",
        ])
        .fails();
    assert!(err.contains("data/bad.de:2: invalid UTF-8"), "{err}");
}

/// A blank line in a TSV or JSONL corpus (typically a trailing one) is an empty pair, skipped and
/// counted as in text corpora, not an error.
#[test]
fn blank_lines_are_counted_skips_in_every_format() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    let de = std::fs::read_to_string(sb.path().join("data/train.de")).unwrap();
    let en = std::fs::read_to_string(sb.path().join("data/train.en")).unwrap();
    let tsv: String = de
        .lines()
        .zip(en.lines())
        .map(|(a, b)| format!("{a}\t{b}\n"))
        .collect();
    sb.write("data/train.tsv", format!("{tsv}\n"));
    let jsonl: String = de
        .lines()
        .zip(en.lines())
        .map(|(a, b)| format!("{}\n", serde_json::json!({"de": a, "en": b})))
        .collect();
    sb.write("data/train.jsonl", format!("{jsonl}\n"));
    for (format, file) in [("tsv", "data/train.tsv"), ("jsonl", "data/train.jsonl")] {
        // One format for both splits: validate on the training file itself.
        let out = sb
            .rdrop()
            .args([
                "train",
                "tiny.toml",
                "--set",
                &format!("data.format={format}"),
            ])
            .args(["--set", &format!("data.train={{ file = \"{file}\" }}")])
            .args(["--set", &format!("output_dir=\"run-{format}\"")])
            .args(["--set", &format!("data.valid={{ file = \"{file}\" }}")])
            .output();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{format}: {stderr}");
        assert!(
            stderr.contains("121 pairs read, 120 kept; skipped: 1 empty"),
            "{format}: {stderr}"
        );
    }
}

#[test]
fn killed_save_keeps_the_previous_checkpoint_resume_and_average() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    // Two empty pairs: counted and reported.
    let mut de = std::fs::read_to_string(sb.path().join("data/train.de")).unwrap();
    let mut en = std::fs::read_to_string(sb.path().join("data/train.en")).unwrap();
    de.push_str("\nNur Quelle.\n");
    en.push_str("Only target.\n\n");
    sb.write("data/train.de", de);
    sb.write("data/train.en", en);

    let out = sb
        .rdrop()
        .args(["train", "tiny.toml"])
        .env("RDROP_FAULT_SAVE", "2")
        .output();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("122 pairs read") && stderr.contains("2 empty"),
        "{stderr}"
    );
    let ck = sb.path().join("run/checkpoints");
    assert!(ck.join("update_00000002/trainer_state.json").is_file());
    assert!(ck.join("update_00000002/model.safetensors").is_file());
    assert!(
        !ck.join("update_00000004").exists(),
        "the interrupted save must not appear complete"
    );

    let err = sb.rdrop().args(["train", "tiny.toml"]).fails();
    assert!(err.contains("--resume"), "{err}");
    let out = sb.rdrop().args(["train", "tiny.toml", "--resume"]).ok();
    assert!(out.contains("trained 6 updates"), "{out}");
    for u in [2, 4, 6] {
        assert!(ck
            .join(format!("update_{u:08}/optimizer.safetensors"))
            .is_file());
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ck.join("update_00000006/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["update"], 6);

    let out = sb
        .rdrop()
        .args([
            "average",
            "--checkpoints",
            "run",
            "--last",
            "2",
            "--out",
            "avg",
        ])
        .ok();
    assert!(out.contains("averaged 2 checkpoints"), "{out}");
    assert!(
        sb.path().join("avg/model.safetensors").is_file()
            && sb.path().join("avg/config.json").is_file()
    );
}

/// `--profile-phases` times every phase of an update: each train record carries the five phases,
/// the model's passes take time, and the phases fit in the wall time between records. Without the
/// flag no record has them.
#[test]
fn profile_phases_split_each_update_within_its_time() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    sb.rdrop()
        .args(["train", "tiny.toml", "--quiet", "--profile-phases"])
        .ok();
    let log = std::fs::read_to_string(sb.path().join("run/train.log")).unwrap();
    assert!(log.contains("| ms/update batch "), "{log}");
    let records = |run: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(sb.path().join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["kind"] == "train")
            .collect()
    };
    let train = records("run");
    assert_eq!(train.len(), 3, "6 updates logged every 2");
    let mut wall_before = 0.0;
    for r in &train {
        let ph = r["phase_ms"].as_object().expect("phase_ms");
        let mut keys: Vec<&str> = ph.keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["backward", "batch", "forward", "loss", "optimizer"]);
        let ms = |k: &str| ph[k].as_f64().unwrap();
        assert!(ph.values().all(|v| v.as_f64().unwrap() >= 0.0), "{r}");
        assert!(ms("forward") > 0.0 && ms("backward") > 0.0, "{r}");
        let updates = r["updates_in_window"].as_f64().unwrap();
        let total_ms: f64 = keys.iter().map(|k| ms(k)).sum::<f64>() * updates;
        let wall = r["wall_s"].as_f64().unwrap();
        assert!(
            total_ms <= (wall - wall_before) * 1e3 + 1.0,
            "phases {total_ms} ms exceed the {} ms between records",
            (wall - wall_before) * 1e3
        );
        wall_before = wall;
    }

    sb.rdrop()
        .args([
            "train",
            "tiny.toml",
            "--quiet",
            "--set",
            "output_dir=\"plain\"",
        ])
        .ok();
    let plain = records("plain");
    assert!(!plain.is_empty() && plain.iter().all(|r| r.get("phase_ms").is_none()));
}
