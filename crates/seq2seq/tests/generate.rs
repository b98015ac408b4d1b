//! Decoding parity with transformers' `generate` and force-decoding scores, on every fixture checkpoint.
//!
//! References: tests/fixtures/decode/<variant>.json from scripts/make_decode_fixtures.py (greedy and
//! beam search under many settings, on 8 sources of mixed lengths) and the model fixtures'
//! reference.json from scripts/make_model_fixtures.py (per-token log-probabilities, generate outputs).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use rdrop_seq2seq::checkpoint;
use rdrop_seq2seq::generate::{self, EarlyStopping, GenerateConfig, Hypothesis};
use rdrop_seq2seq::model::MarianModel;
use serde_json::Value;

const VARIANTS: [&str; 5] = [
    "opus",
    "separate-vocab",
    "untied-relu",
    "minimal-config",
    "pytorch-bin",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn model_dir(variant: &str) -> PathBuf {
    if variant == "early-eos" {
        fixtures().join("decode/early-eos")
    } else {
        fixtures().join("models").join(variant)
    }
}

fn load(variant: &str) -> MarianModel {
    let dir = model_dir(variant);
    let (_, model) = checkpoint::load(dir.to_str().unwrap(), DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("load {}: {e}", dir.display()));
    model
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

/// The transformers `generate` keyword arguments of a fixture case as a `GenerateConfig`.
fn config_from_settings(s: &Value) -> GenerateConfig {
    let get_u = |k: &str| s.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
    GenerateConfig {
        beam: get_u("num_beams").unwrap_or(1),
        lenpen: s
            .get("length_penalty")
            .and_then(|v| v.as_f64())
            .unwrap_or(1.0) as f32,
        early_stopping: match s.get("early_stopping") {
            Some(Value::Bool(true)) => EarlyStopping::Eager,
            Some(Value::String(x)) if x == "never" => EarlyStopping::Never,
            _ => EarlyStopping::Heuristic,
        },
        max_len_a: 0.0,
        max_len_b: 0,
        max_new_tokens: get_u("max_new_tokens"),
        min_new_tokens: get_u("min_new_tokens").unwrap_or(0),
        nbest: get_u("num_return_sequences").unwrap_or(1),
        no_repeat_ngram: get_u("no_repeat_ngram_size").unwrap_or(0),
        forced_eos: s.get("forced_eos_token_id").is_some_and(|v| !v.is_null()),
        ban_pad: s.get("bad_words_ids").is_some_and(|v| !v.is_null()),
        renormalize: s
            .get("renormalize_logits")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        device_search: None,
    }
}

/// Our hypotheses in transformers' output layout: decoder start, tokens, right-padded with pad.
fn as_rows(hyps: &[Vec<Hypothesis>], start: u32, pad: u32, width: usize) -> Vec<Vec<u32>> {
    hyps.iter()
        .flatten()
        .map(|h| {
            let mut row = vec![start];
            row.extend_from_slice(&h.tokens);
            while row.len() < width {
                row.push(pad);
            }
            row
        })
        .collect()
}

fn check_variant(variant: &str) {
    let reference = read_json(&fixtures().join(format!("decode/{variant}.json")));
    let model = load(variant);
    let c = model.config();
    let (start, pad) = (c.decoder_start_token_id, c.pad_token_id);
    let srcs = ids(&reference["src_ids"]);
    let mut failures = Vec::new();
    // Both searches: on the host from whole logits, and from the statistics `masked_top_k`
    // computes beside the logits (a GPU's path; on the CPU its CPU kernel).
    let cases = reference["cases"].as_array().unwrap();
    for (case, device_search) in cases.iter().flat_map(|c| [(c, false), (c, true)]) {
        let name = &format!(
            "{}{}",
            case["name"].as_str().unwrap(),
            if device_search {
                " (device search)"
            } else {
                ""
            }
        );
        let cfg = GenerateConfig {
            device_search: Some(device_search),
            ..config_from_settings(&case["settings"])
        };
        let want = ids(&case["sequences"]);
        let width = want[0].len();
        let hyps = generate::generate(&model, &srcs, &cfg).unwrap();
        assert_eq!(hyps.len(), srcs.len());
        let got = as_rows(&hyps, start, pad, width);
        if got != want {
            failures.push(format!(
                "{variant}/{name}: token ids differ\n  got  {got:?}\n  want {want:?}"
            ));
            continue;
        }
        let longest = hyps.iter().flatten().map(|h| h.tokens.len()).max().unwrap();
        assert_eq!(
            longest + 1,
            width,
            "{variant}/{name}: transformers crops to the longest output"
        );
        if let Some(scores) = case.get("sequences_scores") {
            for (h, s) in hyps.iter().flatten().zip(scores.as_array().unwrap()) {
                let s = s.as_f64().unwrap() as f32;
                if (h.score - s).abs() > 1e-4 {
                    failures.push(format!(
                        "{variant}/{name}: score {} vs transformers {s}",
                        h.score
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn generate_matches_transformers_on_opus() {
    check_variant("opus");
}

#[test]
fn generate_matches_transformers_on_separate_vocab() {
    check_variant("separate-vocab");
}

#[test]
fn generate_matches_transformers_on_untied_relu() {
    check_variant("untied-relu");
}

#[test]
fn generate_matches_transformers_on_minimal_config() {
    check_variant("minimal-config");
}

#[test]
fn generate_matches_transformers_on_pytorch_bin() {
    check_variant("pytorch-bin");
}

/// A model whose hypotheses end at many different steps: beam finishing, length penalty, early stopping.
#[test]
fn generate_matches_transformers_on_early_eos() {
    check_variant("early-eos");
}

/// One sentence at a time gives the same outputs as the padded batch (finished rows leave the batch,
/// padding must not leak into the encoder or cross-attention).
#[test]
fn batching_does_not_change_outputs() {
    let reference = read_json(&fixtures().join("decode/early-eos.json"));
    let model = load("early-eos");
    let srcs = ids(&reference["src_ids"]);
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if !["greedy", "beam4-lp1-n4", "beam4-never-lp0.6"].contains(&name) {
            continue;
        }
        let cfg = config_from_settings(&case["settings"]);
        let batched = generate::generate(&model, &srcs, &cfg).unwrap();
        for (i, s) in srcs.iter().enumerate() {
            let one = generate::generate(&model, std::slice::from_ref(s), &cfg).unwrap();
            let toks = |h: &[Hypothesis]| h.iter().map(|x| x.tokens.clone()).collect::<Vec<_>>();
            assert_eq!(toks(&one[0]), toks(&batched[i]), "{name}, sentence {i}");
            for (a, b) in one[0].iter().zip(&batched[i]) {
                assert!((a.score - b.score).abs() < 1e-4, "{name}, sentence {i}");
            }
        }
    }
}

/// The model fixtures' own generate references (12 new tokens, 3 sources).
#[test]
fn generate_matches_model_fixture_references() {
    for variant in VARIANTS {
        let reference = read_json(&fixtures().join(format!("models/{variant}/reference.json")));
        let model = load(variant);
        let c = model.config();
        let (start, pad) = (c.decoder_start_token_id, c.pad_token_id);
        let mask = ids(&reference["src_mask"]);
        let srcs: Vec<Vec<u32>> = ids(&reference["src_ids"])
            .into_iter()
            .zip(&mask)
            .map(|(r, m)| {
                r.into_iter()
                    .zip(m)
                    .filter(|(_, &m)| m == 1)
                    .map(|(t, _)| t)
                    .collect()
            })
            .collect();
        let gen = &reference["generation"];
        let base = GenerateConfig {
            max_new_tokens: gen["max_new_tokens"].as_u64().map(|n| n as usize),
            ..GenerateConfig::greedy()
        };
        let want = ids(&reference["greedy"]["sequences"]);
        let got = generate::generate(&model, &srcs, &base).unwrap();
        assert_eq!(
            as_rows(&got, start, pad, want[0].len()),
            want,
            "{variant} greedy"
        );
        for b in reference["beam"].as_array().unwrap() {
            let mut settings = b.clone();
            settings["max_new_tokens"] = gen["max_new_tokens"].clone();
            for k in ["forced_eos_token_id", "bad_words_ids", "renormalize_logits"] {
                settings[k] = gen[k].clone();
            }
            let cfg = config_from_settings(&settings);
            let want = ids(&b["sequences"]);
            let got = generate::generate(&model, &srcs, &cfg).unwrap();
            assert_eq!(
                as_rows(&got, start, pad, want[0].len()),
                want,
                "{variant} beam {settings}"
            );
            for (h, s) in got
                .iter()
                .flatten()
                .zip(b["sequences_scores"].as_array().unwrap())
            {
                assert!(
                    (h.score - s.as_f64().unwrap() as f32).abs() <= 1e-4,
                    "{variant} beam scores"
                );
            }
        }
    }
}

fn check_scores(
    model: &MarianModel,
    srcs: &[Vec<u32>],
    tgts: &[Vec<u32>],
    want: &[Vec<f64>],
    what: &str,
) {
    let got = generate::score(model, srcs, tgts).unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.len(),
            w.len(),
            "{what} pair {i}: one log-prob per target token"
        );
        for (a, b) in g.iter().zip(w) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4,
                "{what} pair {i}: {g:?} vs {w:?}"
            );
        }
    }
}

#[test]
fn score_matches_transformers_log_probs() {
    for variant in VARIANTS {
        let reference = read_json(&fixtures().join(format!("models/{variant}/reference.json")));
        let model = load(variant);
        let strip = |rows: Vec<Vec<u32>>, mask: Vec<Vec<u32>>| -> Vec<Vec<u32>> {
            rows.into_iter()
                .zip(mask)
                .map(|(r, m)| {
                    r.into_iter()
                        .zip(m)
                        .filter(|(_, m)| *m == 1)
                        .map(|(t, _)| t)
                        .collect()
                })
                .collect()
        };
        let srcs = strip(ids(&reference["src_ids"]), ids(&reference["src_mask"]));
        let tmask = ids(&reference["tgt_mask"]);
        let tgts = strip(ids(&reference["labels"]), tmask.clone());
        let want: Vec<Vec<f64>> = reference["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&tgts)
            .map(|(r, t)| {
                r.as_array().unwrap()[..t.len()]
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect();
        check_scores(&model, &srcs, &tgts, &want, variant);
    }
    let reference = read_json(&fixtures().join("decode/early-eos.json"));
    let s = &reference["score"];
    let want: Vec<Vec<f64>> = s["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    check_scores(
        &load("early-eos"),
        &ids(&s["src_ids"]),
        &ids(&s["tgt_ids"]),
        &want,
        "early-eos",
    );
}

#[test]
fn generation_config_json_is_read_like_transformers() {
    let (cfg, max_new) = GenerateConfig::from_model_dir(&model_dir("opus")).unwrap();
    assert_eq!(cfg.beam, 4);
    assert!(cfg.forced_eos && cfg.ban_pad && cfg.renormalize);
    assert_eq!(cfg.early_stopping, EarlyStopping::Heuristic);
    assert_eq!(max_new, Some(511));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"num_beams": "four"}"#,
    )
    .unwrap();
    let err = GenerateConfig::from_model_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("generation_config.json") && err.contains("num_beams"),
        "{err}"
    );
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let model = load("opus");
    let cfg = GenerateConfig {
        nbest: 5,
        ..GenerateConfig::default()
    };
    assert!(generate::generate(&model, &[vec![5, 0]], &cfg).is_err());
    let err = generate::generate(&model, &[vec![]], &GenerateConfig::greedy()).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let long = vec![5u32; 500];
    let err = generate::generate(
        &model,
        std::slice::from_ref(&long),
        &GenerateConfig::greedy(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    assert!(generate::score(&model, &[vec![5, 0]], &[]).is_err());
    assert!(generate::score(&model, &[vec![5, 0]], &[long]).is_err());
    assert!(generate::generate(&model, &[], &GenerateConfig::greedy())
        .unwrap()
        .is_empty());
}
