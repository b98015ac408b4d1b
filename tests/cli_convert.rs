//! `rdrop convert`: HF directories, pytorch_model.bin and hub ids (from the cache, offline) in;
//! config.json + model.safetensors + tokenizer files out, with the same outputs as the reference.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::{fixtures, Sandbox};
use rdrop_seq2seq::{checkpoint, Mode};

fn model_fixture(variant: &str) -> std::path::PathBuf {
    fixtures().join("models").join(variant)
}

/// Max |logit - reference| of the model in `dir` on the fixture batch of `variant`.
fn logit_error(dir: &Path, variant: &str) -> f32 {
    let fx = model_fixture(variant);
    let text = std::fs::read_to_string(fx.join("reference.json")).expect("reference.json");
    let r: serde_json::Value = serde_json::from_str(&text).expect("json");
    let tensor = |k: &str| {
        let rows: Vec<Vec<u32>> = serde_json::from_value(r[k].clone()).expect("rows");
        let (b, t) = (rows.len(), rows[0].len());
        candle_core::Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).expect("tensor")
    };
    let want = candle_core::safetensors::load(fx.join("reference.safetensors"), &Device::Cpu)
        .expect("ref")["logits"]
        .clone();
    let (_, model) = checkpoint::load(dir.to_str().expect("utf-8"), DType::F32, &Device::Cpu)
        .expect("load converted");
    let got = model
        .forward(
            &tensor("src_ids"),
            &tensor("src_mask"),
            &tensor("tgt_in"),
            Mode::Eval,
        )
        .expect("forward");
    got.sub(&want)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

#[test]
fn converts_a_directory_with_its_tokenizer_files() {
    let sb = Sandbox::new();
    let src = model_fixture("opus");
    sb.rdrop()
        .args([
            "convert",
            "--model",
            src.to_str().expect("utf-8"),
            "--out",
            "out",
        ])
        .ok();
    let out = sb.path().join("out");
    for f in common::MODEL_FILES {
        assert!(
            out.join(f).is_file(),
            "{f} missing from the converted directory"
        );
    }
    assert!(
        !out.join("reference.json").exists(),
        "only model files are copied"
    );
    for f in ["source.spm", "vocab.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).expect("out"),
            std::fs::read(src.join(f)).expect("src"),
            "{f}"
        );
    }
    // Every tensor bit-identical to the transformers-written file.
    let a =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).expect("out");
    let b =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).expect("src");
    assert_eq!(a.len(), b.len());
    for (k, t) in &b {
        let d = a[k]
            .sub(t)
            .expect("sub")
            .abs()
            .expect("abs")
            .sum_all()
            .expect("sum")
            .to_scalar::<f32>()
            .expect("f32");
        assert_eq!(d, 0.0, "{k}");
    }
    assert!(logit_error(&out, "opus") <= 1e-4);
}

#[test]
fn converts_pytorch_model_bin_to_safetensors() {
    let sb = Sandbox::new();
    let bin = model_fixture("pytorch-bin").join("pytorch_model.bin");
    let stderr = sb
        .rdrop()
        .args([
            "convert",
            "--model",
            bin.to_str().expect("utf-8"),
            "--out",
            "out",
        ])
        .output();
    assert!(
        stderr.status.success(),
        "{}",
        String::from_utf8_lossy(&stderr.stderr)
    );
    let out = sb.path().join("out");
    assert!(out.join("model.safetensors").is_file());
    assert!(!out.join("pytorch_model.bin").exists());
    assert!(logit_error(&out, "pytorch-bin") <= 1e-4);
}

#[test]
fn converts_a_hub_id_from_the_offline_cache() {
    let sb = Sandbox::new();
    // The harness points HF_HOME at <sandbox>/hf-home and sets HF_HUB_OFFLINE=1.
    let rev = "89abcdef0123456789abcdef0123456789abcdef";
    let repo = sb.path().join("hf-home/hub/models--tiny-org--separate");
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).expect("mkdir");
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
    std::fs::write(repo.join("refs/main"), rev).expect("ref");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(model_fixture("separate-vocab").join(f), snap.join(f)).expect("copy");
    }
    sb.rdrop()
        .args(["convert", "--model", "tiny-org/separate", "--out", "out"])
        .ok();
    assert!(logit_error(&sb.path().join("out"), "separate-vocab") <= 1e-4);

    let err = sb
        .rdrop()
        .args(["convert", "--model", "tiny-org/absent", "--out", "out2"])
        .fails();
    assert!(
        err.contains("tiny-org/absent") && err.contains("not in the local cache"),
        "{err}"
    );
}

#[test]
fn bad_inputs_fail_with_the_file_named() {
    let sb = Sandbox::new();
    sb.write("broken/config.json", r#"{"d_model": "wide"}"#);
    std::fs::copy(
        model_fixture("opus").join("model.safetensors"),
        sb.path().join("broken/model.safetensors"),
    )
    .expect("copy");
    let err = sb
        .rdrop()
        .args(["convert", "--model", "broken", "--out", "out"])
        .fails();
    assert!(
        err.contains("config.json") && err.contains("d_model"),
        "{err}"
    );

    sb.write("empty/placeholder", "");
    let err = sb
        .rdrop()
        .args(["convert", "--model", "empty", "--out", "out"])
        .fails();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(
        !sb.path().join("out").exists(),
        "nothing is written on failure"
    );
}
