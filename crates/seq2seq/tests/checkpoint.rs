//! Checkpoints: configs with transformers' defaults, save/load round trips, and typed errors for bad
//! input (missing files, wrong-typed keys, wrong shapes, missing weights).

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use common::{fixture_dir, max_abs_diff, Reference, VARIANTS};
use rdrop_seq2seq::{checkpoint, Config, Error, MarianModel, Mode};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn minimal_config_gets_transformers_defaults() {
    let cfg = checkpoint::load_config(&fixture_dir("minimal-config")).expect("config");
    // MarianConfig defaults (transformers 5.24 configuration_marian.py).
    assert_eq!(cfg.activation_function, "gelu");
    assert!(!cfg.scale_embedding);
    assert_eq!(cfg.max_position_embeddings, 1024);
    assert_eq!(cfg.decoder_vocab_size, cfg.vocab_size);
    assert!(cfg.share_encoder_decoder_embeddings && cfg.tie_word_embeddings);
    assert_eq!(
        (cfg.dropout, cfg.attention_dropout, cfg.activation_dropout),
        (0.1, 0.0, 0.0)
    );
    assert_eq!(
        (cfg.eos_token_id, cfg.forced_eos_token_id, cfg.bos_token_id),
        (0, Some(0), None)
    );
    let full = Config::from_json_str("{}", Path::new("empty.json")).expect("empty config");
    assert_eq!(
        (full.vocab_size, full.d_model, full.pad_token_id),
        (58101, 1024, 58100)
    );
}

#[test]
fn config_json_round_trips_with_unknown_keys() {
    let dir = fixture_dir("opus");
    let cfg = checkpoint::load_config(&dir).expect("config");
    assert!(
        cfg.extra("architectures").is_some(),
        "unknown keys are kept"
    );
    let again = Config::from_json_str(&cfg.to_json(), Path::new("again.json")).expect("reparse");
    assert_eq!(cfg, again);
}

#[test]
fn wrong_typed_config_key_is_named() {
    let text = r#"{"vocab_size": 10, "d_model": "big", "architectures": ["MarianMTModel"]}"#;
    match Config::from_json_str(text, Path::new("x/config.json")) {
        Err(Error::ConfigKey { key, path, .. }) => {
            assert_eq!(key, "d_model");
            assert_eq!(path, Path::new("x/config.json"));
        }
        other => panic!("expected ConfigKey error, got {other:?}"),
    }
    let e = Config::from_json_str(r#"{"scale_embedding": 1}"#, Path::new("c.json")).unwrap_err();
    assert!(e.to_string().contains("scale_embedding"), "{e}");
    let e = Config::from_json_str(r#"{"activation_function": "mish"}"#, Path::new("c.json"))
        .unwrap_err();
    assert!(e.to_string().contains("activation_function"), "{e}");
    let e = Config::from_json_str("[1, 2]", Path::new("c.json")).unwrap_err();
    assert!(matches!(e, Error::ConfigJson { .. }), "{e}");
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let e = checkpoint::load(
        tmp.path().to_str().expect("utf-8"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { what, .. } if what.contains("model.safetensors")),
        "{e}"
    );
    std::fs::copy(
        fixture_dir("opus").join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .expect("copy");
    let e = checkpoint::load(
        tmp.path().to_str().expect("utf-8"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { what, .. } if what == "config.json"),
        "{e}"
    );
}

#[test]
fn wrong_shape_names_key_and_shapes() {
    let tmp = tempfile::tempdir().expect("tmp");
    copy_dir(&fixture_dir("opus"), tmp.path());
    let cfg_path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path).expect("read");
    std::fs::write(
        &cfg_path,
        text.replace("\"vocab_size\": 128", "\"vocab_size\": 130"),
    )
    .expect("write");
    match checkpoint::load(
        tmp.path().to_str().expect("utf-8"),
        DType::F32,
        &Device::Cpu,
    ) {
        Err(Error::WeightShape {
            key,
            expected,
            actual,
            ..
        }) => {
            assert_eq!(key, "model.shared.weight");
            assert_eq!((expected, actual), (vec![130, 32], vec![128, 32]));
        }
        other => panic!("expected WeightShape, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn missing_weight_names_key() {
    let tmp = tempfile::tempdir().expect("tmp");
    copy_dir(&fixture_dir("opus"), tmp.path());
    let st = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&st, &Device::Cpu).expect("load");
    tensors
        .remove("model.decoder.layers.1.fc2.bias")
        .expect("key present");
    candle_core::safetensors::save(&tensors, &st).expect("save");
    match checkpoint::load(
        tmp.path().to_str().expect("utf-8"),
        DType::F32,
        &Device::Cpu,
    ) {
        Err(Error::MissingWeight { key, expected, .. }) => {
            assert_eq!(key, "model.decoder.layers.1.fc2.bias");
            assert_eq!(expected, vec![32]);
        }
        other => panic!("expected MissingWeight, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn garbage_weights_file_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        fixture_dir("opus").join("config.json"),
        tmp.path().join("config.json"),
    )
    .expect("copy");
    std::fs::write(
        tmp.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .expect("write");
    let e = checkpoint::load(
        tmp.path().to_str().expect("utf-8"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Weights { .. }), "{e}");
    std::fs::write(
        tmp.path().join("model.safetensors"),
        b"PK\x03\x04 truncated zip",
    )
    .expect("write");
    let e = checkpoint::load(
        tmp.path().to_str().expect("utf-8"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Weights { .. }), "{e}");
}

#[test]
fn pytorch_bin_loads_with_tied_copies_and_positions_ignored() {
    // The fixture's pytorch_model.bin holds the whole state_dict (tied copies, embed_positions).
    let dir = fixture_dir("pytorch-bin");
    let ckpt = checkpoint::locate(dir.to_str().expect("utf-8")).expect("locate");
    assert!(ckpt.weights.ends_with("pytorch_model.bin"));
    let cfg = checkpoint::load_config(&dir).expect("config");
    let names: Vec<String> = checkpoint::param_shapes(&cfg)
        .expect("shapes")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"model.shared.weight".to_string()));
    assert!(!names
        .iter()
        .any(|n| n.contains("embed_positions") || n == "lm_head.weight"));
}

#[test]
fn a_weights_file_path_selects_that_file() {
    let file = fixture_dir("opus").join("model.safetensors");
    let (cfg, model) =
        checkpoint::load(file.to_str().expect("utf-8"), DType::F32, &Device::Cpu).expect("load");
    assert_eq!(cfg.vocab_size, 128);
    let r = Reference::load("opus");
    let logits = model
        .forward(
            &r.tensor("src_ids"),
            &r.tensor("src_mask"),
            &r.tensor("tgt_in"),
            Mode::Eval,
        )
        .expect("fwd");
    assert!(max_abs_diff(&logits, &r.logits) <= 1e-4);
}

#[test]
fn save_then_load_gives_identical_logits_and_hf_key_layout() {
    for variant in VARIANTS {
        let dir = fixture_dir(variant);
        let cfg = checkpoint::load_config(&dir).expect("config");
        let varmap = checkpoint::load_varmap(&dir, &cfg, DType::F32, &Device::Cpu).expect("varmap");
        let tmp = tempfile::tempdir().expect("tmp");
        let out = tmp.path().join("saved");
        checkpoint::save(&out, &cfg, &varmap).expect("save");
        let (cfg2, model2) =
            checkpoint::load(out.to_str().expect("utf-8"), DType::F32, &Device::Cpu)
                .expect("reload");
        assert_eq!(cfg.vocab_size, cfg2.vocab_size);
        let model = MarianModel::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .expect("model");
        let r = Reference::load(variant);
        let run = |m: &MarianModel| {
            m.forward(
                &r.tensor("src_ids"),
                &r.tensor("src_mask"),
                &r.tensor("tgt_in"),
                Mode::Eval,
            )
            .expect("fwd")
        };
        assert_eq!(max_abs_diff(&run(&model), &run(&model2)), 0.0, "{variant}");
        // Same keys transformers' save_pretrained writes for this layout (pytorch-bin: what it would
        // write, i.e. the opus layout).
        let saved = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)
            .expect("saved");
        let mut saved: Vec<String> = saved.into_keys().collect();
        saved.sort();
        if variant != "pytorch-bin" {
            let hf = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)
                .expect("hf");
            let mut hf: Vec<String> = hf.into_keys().collect();
            hf.sort();
            assert_eq!(saved, hf, "{variant}");
        } else {
            assert!(saved.contains(&"model.shared.weight".to_string()));
            assert!(!saved
                .iter()
                .any(|k| k == "lm_head.weight" || k.contains("embed_positions")));
        }
        // No temporary files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }
}

#[test]
fn tied_weights_stay_one_var() {
    let dir = fixture_dir("opus");
    let cfg = checkpoint::load_config(&dir).expect("config");
    let varmap = checkpoint::load_varmap(&dir, &cfg, DType::F32, &Device::Cpu).expect("varmap");
    let data = varmap.data().lock().expect("lock");
    assert!(data.contains_key("model.shared.weight"));
    for k in [
        "lm_head.weight",
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
    ] {
        assert!(
            !data.contains_key(k),
            "{k} should be tied to model.shared.weight"
        );
    }
    let expected = checkpoint::param_shapes(&cfg).expect("shapes").len();
    assert_eq!(data.len(), expected);
}
