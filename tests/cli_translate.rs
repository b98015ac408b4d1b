//! `rdrop translate` and `rdrop score` from the command line, against transformers' outputs
//! (tests/fixtures/decode/cli.json and <variant>.json, from scripts/make_decode_fixtures.py).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{fixtures, Sandbox};
use serde_json::Value;

fn cli_ref() -> Value {
    let p = fixtures().join("decode/cli.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn opus() -> String {
    fixtures().join("models/opus").display().to_string()
}

/// The early-eos model with the opus fixture's tokenizer (same vocabulary), assembled in the sandbox.
fn early_eos(sb: &Sandbox) -> String {
    let dir = sb.path().join("early-eos");
    std::fs::create_dir_all(&dir).unwrap();
    for (from, names) in [
        (
            fixtures().join("decode/early-eos"),
            &["config.json", "generation_config.json", "model.safetensors"][..],
        ),
        (
            fixtures().join("models/opus"),
            &[
                "source.spm",
                "target.spm",
                "vocab.json",
                "tokenizer_config.json",
            ][..],
        ),
    ] {
        for n in names {
            std::fs::copy(from.join(n), dir.join(n)).unwrap();
        }
    }
    dir.display().to_string()
}

fn lines_of(s: &str) -> Vec<String> {
    s.lines().map(|l| l.to_string()).collect()
}

#[test]
fn translates_stdin_like_transformers() {
    let r = cli_ref();
    let sb = Sandbox::new();
    let input = strings(&r["lines"]).join("\n") + "\n";
    for (model, name) in [(opus(), "opus"), (early_eos(&sb), "early-eos")] {
        for (label, beam) in [("greedy", "1"), ("beam4", "4")] {
            let out = sb
                .rdrop()
                .args([
                    "translate",
                    "--model",
                    &model,
                    "--beam",
                    beam,
                    "--max-new-tokens",
                    "16",
                ])
                .stdin(input.clone())
                .ok();
            assert_eq!(
                lines_of(&out),
                strings(&r["models"][name][label]["translations"]),
                "{name} {label}"
            );
        }
    }
}

#[test]
fn file_input_with_empty_lines_and_small_batches_keeps_order() {
    let r = cli_ref();
    let sb = Sandbox::new();
    let model = early_eos(&sb);
    let lines = strings(&r["lines"]);
    let want = strings(&r["models"]["early-eos"]["beam4"]["translations"]);
    // Empty lines between and around sentences, and a line of spaces.
    let mut input = vec![String::new()];
    let mut expected = vec![String::new()];
    for (i, (l, w)) in lines.iter().zip(&want).enumerate() {
        input.push(l.clone());
        expected.push(w.clone());
        if i % 3 == 1 {
            input.push(if i == 1 { "   ".into() } else { String::new() });
            expected.push(String::new());
        }
    }
    let inp = sb.write("in.txt", input.join("\n") + "\n");
    // Tiny batches force several length-sorted batches per chunk, decoded 3 at a time.
    sb.rdrop()
        .args([
            "translate",
            "--model",
            &model,
            "--beam",
            "4",
            "--max-new-tokens",
            "16",
        ])
        .args([
            "--batch-tokens",
            "24",
            "--threads",
            "3",
            "--input",
            inp.to_str().unwrap(),
            "--output",
            "out.txt",
        ])
        .ok();
    let out = std::fs::read_to_string(sb.path().join("out.txt")).unwrap();
    assert_eq!(lines_of(&out), expected);
    // Windows line endings and a missing final newline change nothing.
    let crlf = sb.write("crlf.txt", input.join("\r\n"));
    let out = sb
        .rdrop()
        .args([
            "translate",
            "--model",
            &model,
            "--beam",
            "4",
            "--max-new-tokens",
            "16",
        ])
        .args(["--input", crlf.to_str().unwrap()])
        .ok();
    assert_eq!(lines_of(&out), expected);
}

/// The counts of `RDROP_PROGRESS=plain` lines (`progress: 16/40 sentences, ...`): (done, total).
fn progress_counts(stderr: &str) -> Vec<(u64, Option<u64>)> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("progress: "))
        .map(|rest| {
            let count = rest.split(' ').next().unwrap();
            match count.split_once('/') {
                Some((done, total)) => (done.parse().unwrap(), Some(total.parse().unwrap())),
                None => (count.parse().unwrap(), None),
            }
        })
        .collect()
}

#[test]
fn progress_advances_per_batch_on_a_small_file() {
    let r = cli_ref();
    let sb = Sandbox::new();
    let lines = strings(&r["lines"]);
    // 40 lines, two of them empty, far below the 20,000-line chunk: one chunk of 5 batches of 8,
    // so the old per-chunk bar advanced once, at the end.
    let mut input: Vec<String> = (0..40).map(|i| lines[i % lines.len()].clone()).collect();
    input[5] = String::new();
    input[17] = String::new();
    let inp = sb.write("in.txt", input.join("\n") + "\n");
    let run = |quiet: bool| {
        let mut cmd = sb
            .rdrop()
            .env("RDROP_PROGRESS", "plain")
            .args(["translate", "--model", &opus(), "--beam", "1"])
            .args([
                "--max-new-tokens",
                "4",
                "--batch-size",
                "8",
                "--threads",
                "2",
            ])
            .args(["--input", inp.to_str().unwrap()]);
        if quiet {
            cmd = cmd.args(["--quiet"]);
        }
        let out = cmd.output();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (stdout, stderr) = run(false);
    let counts = progress_counts(&stderr);
    assert!(counts.len() >= 3, "{stderr}");
    assert!(counts.iter().all(|&(_, t)| t == Some(40)), "{stderr}");
    let done: Vec<u64> = counts.iter().map(|c| c.0).collect();
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{stderr}");
    assert_eq!(done.last(), Some(&40), "{stderr}");
    assert!(
        stderr.contains("sent/s") && stderr.contains("tok/s"),
        "{stderr}"
    );
    assert_eq!(stdout.lines().count(), 40);
    // --quiet silences it; the translations do not depend on it.
    let (quiet_out, quiet_err) = run(true);
    assert!(progress_counts(&quiet_err).is_empty(), "{quiet_err}");
    assert_eq!(quiet_out, stdout);

    // Standard input has no known total: a running count.
    let out = sb
        .rdrop()
        .env("RDROP_PROGRESS", "plain")
        .args(["translate", "--model", &opus(), "--beam", "1"])
        .args(["--max-new-tokens", "4", "--batch-size", "8"])
        .stdin(input.join("\n") + "\n")
        .output();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let counts = progress_counts(&stderr);
    assert!(counts.iter().all(|&(_, t)| t.is_none()), "{stderr}");
    assert!(counts.len() >= 3, "{stderr}");
    assert_eq!(counts.last().map(|c| c.0), Some(40), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), stdout);
}

#[test]
fn help_groups_options_under_headings_with_defaults() {
    let sb = Sandbox::new();
    let help = sb.rdrop().args(["translate", "--help"]).ok();
    let mut at = 0;
    // Each heading in this order, each followed by one of its options before the next heading.
    for (heading, option) in [
        ("Input/output:", "--input"),
        ("Search:", "--beam"),
        ("Length:", "--max-new-tokens"),
        ("Batching:", "--batch-size"),
        ("Device:", "--threads"),
    ] {
        let h = help[at..]
            .find(&format!("\n{heading}\n"))
            .unwrap_or_else(|| panic!("no {heading} after byte {at}:\n{help}"))
            + at;
        let o = help[h..].find(option).unwrap() + h;
        assert!(!help[h + heading.len() + 1..o].contains(":\n"), "{help}");
        at = o;
    }
    // Options whose default comes from the model say so; the others show clap's default.
    for want in [
        "generation_config.json (1 if it has none), else 4]",
        "[default: 4096]",
        "[default: 128]",
        "[default: cpu]",
        "[default: one per core]",
        "[default: standard input]",
    ] {
        assert!(help.contains(want), "{want}:\n{help}");
    }
    let help = sb.rdrop().args(["score", "--help"]).ok();
    for want in ["Input/output:", "Batching:", "Device:", "--quiet"] {
        assert!(help.contains(want), "{want}:\n{help}");
    }
}

#[test]
fn score_progress_advances_per_batch() {
    let r = cli_ref();
    let sb = Sandbox::new();
    let pairs = r["models"]["opus"]["score"].as_array().unwrap();
    let src = sb.write("src.txt", strings(&r["lines"]).join("\n") + "\n");
    let tgt = sb.write(
        "tgt.txt",
        pairs
            .iter()
            .map(|p| p["target"].as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    );
    let score = |quiet: bool| {
        let mut cmd = sb
            .rdrop()
            .env("RDROP_PROGRESS", "plain")
            .args(["score", "--model", &opus(), "--batch-size", "2", "--source"])
            .arg_path(&src)
            .args(["--target"])
            .arg_path(&tgt);
        if quiet {
            cmd = cmd.args(["-q"]);
        }
        let out = cmd.output();
        assert!(out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let stderr = score(false);
    let n = pairs.len() as u64;
    let counts = progress_counts(&stderr);
    assert!(counts.len() >= 3, "{stderr}");
    assert!(counts.iter().all(|&(_, t)| t == Some(n)), "{stderr}");
    assert!(counts.windows(2).all(|w| w[0].0 < w[1].0), "{stderr}");
    assert_eq!(counts.last().map(|c| c.0), Some(n), "{stderr}");
    assert!(stderr.contains("pairs/s"), "{stderr}");
    assert!(progress_counts(&score(true)).is_empty());
}

#[test]
fn token_ids_mode_matches_generate_references() {
    let p = fixtures().join("decode/early-eos.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let sb = Sandbox::new();
    let model = early_eos(&sb);
    let srcs: Vec<String> = r["src_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    for case in r["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (beam, lenpen) = match name {
            "greedy" => ("1", "1.0"),
            "beam4-lp0.6-n2" => ("4", "0.6"),
            _ => continue,
        };
        let want: Vec<String> = case["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .step_by(
                case["settings"]["num_return_sequences"]
                    .as_u64()
                    .unwrap_or(1) as usize,
            )
            .map(|row| {
                let row: Vec<u64> = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect();
                let end = row
                    .iter()
                    .skip(1)
                    .position(|&t| t == 0)
                    .map_or(row.len(), |p| p + 2);
                row[1..end]
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        // The source [</s>] alone is a non-empty id line ("0").
        let out = sb
            .rdrop()
            .args([
                "translate",
                "--model",
                &model,
                "--token-ids",
                "--beam",
                beam,
                "--lenpen",
                lenpen,
            ])
            .args(["--max-new-tokens", "20"])
            .stdin(srcs.join("\n") + "\n")
            .ok();
        assert_eq!(lines_of(&out), want, "{name}");
    }
}

#[test]
fn nbest_lists_hypotheses_with_scores() {
    let p = fixtures().join("decode/early-eos.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let case = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "beam4-lp1-n4")
        .unwrap();
    let sb = Sandbox::new();
    let model = early_eos(&sb);
    let src: Vec<String> = r["src_ids"][3]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    let out = sb
        .rdrop()
        .args([
            "translate",
            "--model",
            &model,
            "--token-ids",
            "--beam",
            "4",
            "--nbest",
            "4",
        ])
        .args(["--max-new-tokens", "20"])
        .stdin(src.join(" ") + "\n")
        .ok();
    let lines = lines_of(&out);
    assert_eq!(lines.len(), 4, "{out}");
    for (k, line) in lines.iter().enumerate() {
        let parts: Vec<&str> = line.split(" ||| ").collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(parts[0], "0");
        let score: f64 = parts[2].parse().unwrap();
        let want = case["sequences_scores"][3 * 4 + k].as_f64().unwrap();
        assert!((score - want).abs() < 1e-4, "{line} vs {want}");
    }
}

#[test]
fn over_long_line_is_truncated_with_one_warning() {
    let r = cli_ref();
    let sb = Sandbox::new();
    let long = r["long_line"].as_str().unwrap();
    let out = sb
        .rdrop()
        .args([
            "translate",
            "--model",
            &opus(),
            "--beam",
            "1",
            "--max-new-tokens",
            "16",
        ])
        .stdin(format!("{long}\n{long}\n"))
        .output();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("truncated").count(), 1, "{stderr}");
    assert!(
        stderr.contains("line 1") && stderr.contains("128"),
        "{stderr}"
    );
    let want = r["models"]["opus"]["greedy"]["long_line"].as_str().unwrap();
    assert_eq!(
        lines_of(&String::from_utf8(out.stdout).unwrap()),
        vec![want, want]
    );
}

#[test]
fn bad_input_is_reported_with_its_line_number() {
    let sb = Sandbox::new();
    let mut input = b"Trainna.\nRegon bourur.\n".to_vec();
    input.extend_from_slice(b"bad \xff\xfe byte\nTrainna.\n");
    let out = sb
        .rdrop()
        .args([
            "translate",
            "--model",
            &opus(),
            "--beam",
            "1",
            "--max-new-tokens",
            "4",
        ])
        .stdin(input)
        .output();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("UTF-8"),
        "{stderr}"
    );
    // The lines before the bad one were translated and written.
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);

    let err = sb
        .rdrop()
        .args(["translate", "--model", "no/such-model"])
        .stdin("x\n")
        .fails();
    assert!(err.contains("no/such-model"), "{err}");
    let err = sb
        .rdrop()
        .args([
            "translate",
            "--model",
            &opus(),
            "--beam",
            "2",
            "--nbest",
            "3",
        ])
        .stdin("x\n")
        .fails();
    assert!(err.contains("nbest"), "{err}");
    let err = sb
        .rdrop()
        .args(["translate", "--model", &opus(), "--token-ids"])
        .stdin("5 x 0\n")
        .fails();
    assert!(err.contains("line 1") && err.contains("`x`"), "{err}");
    let err = sb
        .rdrop()
        .args(["translate", "--model", &opus(), "--device", "tpu"])
        .stdin("x\n")
        .fails();
    assert!(err.contains("tpu"), "{err}");
}

#[test]
fn closed_stdout_exits_quietly() {
    let sb = Sandbox::new();
    let input = sb.write("in.txt", "Trainna.\n".repeat(300));
    let bin = env!("CARGO_BIN_EXE_rdrop");
    let script = format!(
        "'{bin}' translate --model '{}' --beam 1 --max-new-tokens 2 --batch-size 1 < '{}' | head -n 1 >/dev/null; \
         echo \"status=${{PIPESTATUS[0]}}\"",
        opus(),
        input.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("status=0"), "{stdout} {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn score_prints_log_probs_like_transformers() {
    let r = cli_ref();
    let sb = Sandbox::new();
    let pairs = r["models"]["opus"]["score"].as_array().unwrap();
    let src = sb.write("src.txt", strings(&r["lines"]).join("\n") + "\n");
    let tgt = sb.write(
        "tgt.txt",
        pairs
            .iter()
            .map(|p| p["target"].as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    );
    let args = |per_token: bool| {
        let mut a: Vec<String> = ["score", "--model", &opus(), "--source"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(src.display().to_string());
        a.push("--target".into());
        a.push(tgt.display().to_string());
        a.extend(["--batch-tokens".to_string(), "40".to_string()]);
        if per_token {
            a.push("--per-token".into());
        }
        a
    };
    let out = sb.rdrop().args(args(false)).ok();
    let lines = lines_of(&out);
    assert_eq!(lines.len(), pairs.len());
    for (line, p) in lines.iter().zip(pairs) {
        let want: f64 = p["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        let got: f64 = line.parse().unwrap();
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    let out = sb.rdrop().args(args(true)).ok();
    for (line, p) in lines_of(&out).iter().zip(pairs) {
        let (total, toks) = line.split_once('\t').unwrap();
        let toks: Vec<f64> = toks.split(' ').map(|x| x.parse().unwrap()).collect();
        let want: Vec<f64> = p["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(
            toks.len(),
            want.len(),
            "one value per target token incl. </s>"
        );
        for (a, b) in toks.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{line}");
        }
        assert!((total.parse::<f64>().unwrap() - want.iter().sum::<f64>()).abs() < 1e-4);
    }
    // Unpaired files are refused.
    let short = sb.write("short.txt", "Trainna.\n");
    let err = sb
        .rdrop()
        .args(["score", "--model", &opus(), "--source"])
        .arg_path(&src)
        .args(["--target"])
        .arg_path(&short)
        .fails();
    assert!(err.contains("7 lines") && err.contains("has 1"), "{err}");
}

trait ArgPath {
    fn arg_path(self, p: &std::path::Path) -> Self;
}

impl ArgPath for common::Rdrop {
    fn arg_path(self, p: &std::path::Path) -> Self {
        self.args([PathBuf::from(p)])
    }
}

#[test]
fn profile_phases_counts_every_step_and_changes_no_output() {
    let sb = Sandbox::new();
    let model = opus();
    // From a file, not stdin: a stdin chunk holds only the lines that have arrived, so a loaded
    // machine could split the three lines over two batches.
    let ids = sb.write("ids.txt", "5 9 13 0\n7 7 21 30 4 0\n11 0\n");
    let ids = ids.to_str().unwrap();
    let run = |profile: bool| {
        let mut args = vec![
            "translate",
            "--model",
            &model,
            "--input",
            ids,
            "--token-ids",
            "--beam",
            "1",
            "--max-new-tokens",
            "12",
        ];
        if profile {
            args.push("--profile-phases");
        }
        sb.rdrop().args(args).output()
    };
    let plain = run(false);
    let timed = run(true);
    assert!(plain.status.success() && timed.status.success());
    assert_eq!(
        timed.stdout, plain.stdout,
        "profiling changed the translations"
    );
    let stderr = String::from_utf8_lossy(&timed.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("phases: "))
        .unwrap_or_else(|| panic!("no phases line in:\n{stderr}"));
    let p: Value = serde_json::from_str(line).unwrap();
    // Greedy search feeds every unfinished sentence once per step, so the rows fed are the output
    // tokens (each line's ids, `</s>` included) and the steps of the one batch are the longest line.
    let out = String::from_utf8(plain.stdout).unwrap();
    let lens: Vec<u64> = out
        .lines()
        .map(|l| l.split_whitespace().count() as u64)
        .collect();
    assert_eq!(p["batches"], 1);
    assert_eq!(p["rows"].as_u64(), Some(lens.iter().sum()));
    assert_eq!(p["steps"].as_u64(), lens.iter().max().copied());
    for k in [
        "load_s",
        "encode_s",
        "step_s",
        "download_s",
        "select_s",
        "search_s",
    ] {
        let s = p[k].as_f64().unwrap_or(-1.0);
        assert!(
            s >= 0.0 && s <= p["wall_s"].as_f64().unwrap(),
            "{k} = {s} in {line}"
        );
    }
}
