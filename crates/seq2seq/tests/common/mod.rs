//! Shared helpers for the model tests: the reference fixtures written by
//! `scripts/make_model_fixtures.py` (transformers 5.24 outputs on tiny random Marian checkpoints).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

/// Every fixture variant.
pub const VARIANTS: [&str; 5] = [
    "opus",
    "separate-vocab",
    "untied-relu",
    "minimal-config",
    "pytorch-bin",
];

pub fn fixture_dir(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models")
        .join(variant)
}

/// A variant's `reference.json` plus its reference logits.
pub struct Reference {
    pub json: Value,
    pub logits: Tensor,
}

impl Reference {
    pub fn load(variant: &str) -> Reference {
        let dir = fixture_dir(variant);
        let text =
            std::fs::read_to_string(dir.join("reference.json")).expect("read reference.json");
        let json: Value = serde_json::from_str(&text).expect("parse reference.json");
        let mut st =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .expect("read reference.safetensors");
        let logits = st
            .remove("logits")
            .expect("logits in reference.safetensors");
        Reference { json, logits }
    }

    pub fn rows_u32(&self, key: &str) -> Vec<Vec<u32>> {
        self.json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is an array"))
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_u64().expect("id") as u32)
                    .collect()
            })
            .collect()
    }

    pub fn rows_f32(&self, key: &str) -> Vec<Vec<f32>> {
        self.json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is an array"))
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_f64().expect("number") as f32)
                    .collect()
            })
            .collect()
    }

    pub fn tensor(&self, key: &str) -> Tensor {
        let rows = self.rows_u32(key);
        let (b, t) = (rows.len(), rows[0].len());
        Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).expect("tensor")
    }
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    a.sub(b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max abs diff")
}
