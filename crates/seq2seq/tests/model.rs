//! The model against transformers: logits, per-token log-probabilities and greedy outputs on padded
//! batches for every fixture variant, and incremental decoding against the full forward pass.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::{fixture_dir, max_abs_diff, Reference, VARIANTS};
use rdrop_seq2seq::{checkpoint, DecoderCache, MarianModel, Mode};

const LOGIT_TOL: f32 = 1e-4;

fn load(variant: &str) -> MarianModel {
    load_as(variant, DType::F32)
}

fn load_as(variant: &str, dtype: DType) -> MarianModel {
    let dir = fixture_dir(variant);
    checkpoint::load(dir.to_str().expect("utf-8 path"), dtype, &Device::Cpu)
        .expect("load fixture")
        .1
}

/// The two kinds of decoding cache: an f32 model on the CPU keeps keys and values in host memory
/// behind per-row tables, any other (f64 here) in tensors that reordering copies.
const CACHE_KINDS: [DType; 2] = [DType::F32, DType::F64];

/// Largest difference of two tensors of any float dtype.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(
        &a.to_dtype(DType::F32).expect("f32"),
        &b.to_dtype(DType::F32).expect("f32"),
    )
}

#[test]
fn logits_match_transformers_on_padded_batches() {
    for variant in VARIANTS {
        let r = Reference::load(variant);
        let model = load(variant);
        let logits = model
            .forward(
                &r.tensor("src_ids"),
                &r.tensor("src_mask"),
                &r.tensor("tgt_in"),
                Mode::Eval,
            )
            .expect("forward");
        let err = max_abs_diff(&logits, &r.logits);
        println!(
            "{variant}: max |logit err| {err:.2e} (logits up to {})",
            r.json["max_abs_logit"]
        );
        assert!(err <= LOGIT_TOL, "{variant}: max abs logit error {err}");
    }
}

#[test]
fn token_logprobs_match_transformers() {
    for variant in VARIANTS {
        let r = Reference::load(variant);
        let model = load(variant);
        let logits = model
            .forward(
                &r.tensor("src_ids"),
                &r.tensor("src_mask"),
                &r.tensor("tgt_in"),
                Mode::Eval,
            )
            .expect("forward");
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).expect("log_softmax");
        let labels = r.tensor("labels");
        let got = lp
            .gather(&labels.unsqueeze(2).expect("unsqueeze"), 2)
            .expect("gather")
            .squeeze(2)
            .expect("squeeze");
        let got = got.to_vec2::<f32>().expect("to_vec2");
        let want = r.rows_f32("token_logprobs");
        let mask = r.rows_u32("tgt_mask");
        for (b, row) in want.iter().enumerate() {
            for (t, w) in row.iter().enumerate() {
                if mask[b][t] == 1 {
                    let e = (got[b][t] - w).abs();
                    assert!(
                        e <= LOGIT_TOL,
                        "{variant}: log-prob [{b}][{t}] {} vs {w}",
                        got[b][t]
                    );
                }
            }
        }
    }
}

/// Greedy decoding with the cache, applying the logits processors the fixtures were generated with:
/// pad banned (`bad_words_ids`), eos forced at the last step (`forced_eos_token_id`).
fn greedy(model: &MarianModel, r: &Reference) -> Vec<Vec<u32>> {
    let g = &r.json["generation"];
    let id = |k: &str| g[k].as_u64().expect("id") as u32;
    let (pad, eos, start) = (
        id("pad_token_id"),
        id("eos_token_id"),
        id("decoder_start_token_id"),
    );
    let forced_eos = g["forced_eos_token_id"].as_u64().map(|v| v as u32);
    let max_new = g["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
    let (src, mask) = (r.tensor("src_ids"), r.tensor("src_mask"));
    let enc = model.encode(&src, &mask, Mode::Eval).expect("encode");
    let mut cache = model.new_cache(&enc, &mask).expect("cache");
    let b = src.dim(0).expect("batch");
    let mut seqs = vec![vec![start]; b];
    let mut done = vec![false; b];
    for step in 0..max_new {
        let last: Vec<u32> = seqs.iter().map(|s| *s.last().expect("non-empty")).collect();
        let logits = model
            .decode_step(
                &Tensor::new(last.as_slice(), &Device::Cpu).expect("t"),
                &mut cache,
            )
            .expect("step");
        let rows = logits.to_vec2::<f32>().expect("rows");
        for i in 0..b {
            if done[i] {
                seqs[i].push(pad);
                continue;
            }
            let tok = match forced_eos {
                Some(f) if step + 1 == max_new => f,
                _ => {
                    let mut best = (f32::NEG_INFINITY, 0u32);
                    for (v, &x) in rows[i].iter().enumerate() {
                        if v as u32 != pad && x > best.0 {
                            best = (x, v as u32);
                        }
                    }
                    best.1
                }
            };
            seqs[i].push(tok);
            done[i] = tok == eos;
        }
        if done.iter().all(|d| *d) {
            break;
        }
    }
    seqs
}

#[test]
fn greedy_ids_match_transformers_generate() {
    for variant in VARIANTS {
        let r = Reference::load(variant);
        let model = load(variant);
        let want: Vec<Vec<u32>> = r.json["greedy"]["sequences"]
            .as_array()
            .expect("sequences")
            .iter()
            .map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_u64().expect("id") as u32)
                    .collect()
            })
            .collect();
        assert_eq!(greedy(&model, &r), want, "{variant}");
    }
}

/// The reference batch's decoder inputs, the full teacher-forced logits for them, and an empty
/// decoding cache for its sources.
fn start_decoding(r: &Reference, model: &MarianModel) -> (Tensor, Tensor, DecoderCache) {
    let (src, mask, tgt_in) = (
        r.tensor("src_ids"),
        r.tensor("src_mask"),
        r.tensor("tgt_in"),
    );
    let enc = model.encode(&src, &mask, Mode::Eval).expect("encode");
    let full = model
        .decode(&tgt_in, &enc, &mask, Mode::Eval)
        .expect("decode");
    let cache = model.new_cache(&enc, &mask).expect("cache");
    (tgt_in, full, cache)
}

#[test]
fn incremental_decoding_equals_full_forward() {
    for (variant, dtype) in VARIANTS.iter().flat_map(|v| CACHE_KINDS.map(|d| (*v, d))) {
        let r = Reference::load(variant);
        let model = load_as(variant, dtype);
        let (tgt_in, full, mut cache) = start_decoding(&r, &model);
        let t_len = tgt_in.dim(1).expect("T");
        for t in 0..t_len {
            let step = model
                .decode_step(&tgt_in.i((.., t)).expect("col"), &mut cache)
                .expect("step");
            let err = max_diff(&step, &full.i((.., t, ..)).expect("slice"));
            assert!(
                err <= 1e-4,
                "{variant} {dtype:?}: step {t} differs from the full pass by {err}"
            );
        }
        assert_eq!(cache.len(), t_len);
    }
}

#[test]
fn cache_select_reorders_and_drops_rows() {
    let r = Reference::load("opus");
    for dtype in CACHE_KINDS {
        let model = load_as("opus", dtype);
        let (tgt_in, full, mut cache) = start_decoding(&r, &model);
        for t in 0..3 {
            model
                .decode_step(&tgt_in.i((.., t)).expect("col"), &mut cache)
                .expect("step");
        }
        // Beam-style reordering with a repeat, and row 1 dropped.
        let rows = Tensor::new(&[2u32, 0, 0], &Device::Cpu).expect("rows");
        let mut picked = cache.select(&rows).expect("select");
        assert_eq!(picked.batch_size(), 3);
        assert_eq!(picked.len(), 3);
        let tin = tgt_in.index_select(&rows, 0).expect("rows of tgt_in");
        let want = full.index_select(&rows, 0).expect("rows of logits");
        for t in 3..5 {
            let step = model
                .decode_step(&tin.i((.., t)).expect("col"), &mut picked)
                .expect("step");
            let err = max_diff(&step, &want.i((.., t, ..)).expect("slice"));
            assert!(
                err <= 1e-4,
                "{dtype:?}: step {t} after select differs by {err}"
            );
        }
        // A row index past the batch is an error, not a panic.
        let bad = Tensor::new(&[3u32], &Device::Cpu).expect("rows");
        assert!(cache.select(&bad).is_err());
    }
}

#[test]
fn padding_does_not_leak_into_real_positions() {
    // Row 1 alone (no padding) must give the logits it gets inside the padded batch.
    let r = Reference::load("opus");
    let model = load("opus");
    let src = r.rows_u32("src_ids");
    let smask = r.rows_u32("src_mask");
    let tgt = r.rows_u32("tgt_in");
    let tmask = r.rows_u32("tgt_mask");
    let s_len = smask[1].iter().sum::<u32>() as usize;
    let t_len = tmask[1].iter().sum::<u32>() as usize;
    let one = |v: &[u32]| {
        Tensor::new(v, &Device::Cpu)
            .expect("t")
            .unsqueeze(0)
            .expect("row")
    };
    let alone = model
        .forward(
            &one(&src[1][..s_len]),
            &one(&smask[1][..s_len]),
            &one(&tgt[1][..t_len]),
            Mode::Eval,
        )
        .expect("forward");
    let batched = r.logits.i((1..2, ..t_len, ..)).expect("slice");
    let err = max_abs_diff(&alone, &batched);
    assert!(
        err <= 1e-4,
        "unpadded row differs from its padded version by {err}"
    );
}

#[test]
fn sinusoidal_positions_follow_transformers_layout() {
    // An encoder with no layers and all-zero embeddings outputs the positions themselves.
    let cfg = rdrop_seq2seq::Config::from_json_str(
        r#"{"vocab_size": 8, "d_model": 8, "encoder_layers": 0, "decoder_layers": 0,
            "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 4,
            "decoder_ffn_dim": 4, "pad_token_id": 7, "decoder_start_token_id": 7,
            "max_position_embeddings": 4}"#,
        std::path::Path::new("inline"),
    )
    .expect("config");
    let model = MarianModel::new(&cfg, candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu))
        .expect("model");
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).expect("ids");
    let mask = Tensor::new(&[[1u32, 1, 1]], &Device::Cpu).expect("mask");
    let x = model
        .encode(&ids, &mask, Mode::Eval)
        .expect("encode")
        .squeeze(0)
        .expect("squeeze");
    let x = x.to_vec2::<f32>().expect("rows");
    // transformers: position_enc[pos, j] = pos / 10000^(2*(j//2)/dim); sin of even j first, cos of odd j.
    for (pos, row) in x.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let i = if j < 4 { j } else { j - 4 };
            let a = pos as f64 / 10000f64.powf((2 * i) as f64 / 8.0);
            let want = if j < 4 { a.sin() } else { a.cos() };
            assert!(
                (v as f64 - want).abs() < 1e-6,
                "pos {pos} dim {j}: {v} vs {want}"
            );
        }
    }
}

/// Steps write keys and values into the cache's buffers in place: a clone must own its buffers, or
/// decoding one continuation would overwrite the other's positions.
#[test]
fn a_cloned_cache_decodes_independently() {
    let r = Reference::load("opus");
    let model = load_as("opus", DType::F32);
    let (tgt_in, full, mut cache) = start_decoding(&r, &model);
    for t in 0..3 {
        model
            .decode_step(&tgt_in.i((.., t)).expect("col"), &mut cache)
            .expect("step");
    }
    let mut other = cache.clone();
    let col = |t: usize| tgt_in.i((.., t)).expect("col");
    model.decode_step(&col(3), &mut cache).expect("step");
    // The clone continues with other tokens at the same positions.
    let shifted = (col(3) + 1.0).expect("other ids");
    model.decode_step(&shifted, &mut other).expect("step");
    let step = model.decode_step(&col(4), &mut cache).expect("step");
    let err = max_diff(&step, &full.i((.., 4, ..)).expect("slice"));
    assert!(
        err <= 1e-4,
        "the clone's step changed the original's keys: {err}"
    );
}
