//! The inference model (`MarianModel::freeze`) against transformers and against the model it was
//! frozen from: logits, incremental decoding on both cache kinds, row selection, and decoding.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use common::{fixture_dir, max_abs_diff, Reference, VARIANTS};
use rdrop_seq2seq::generate::{self, GenerateConfig};
use rdrop_seq2seq::{checkpoint, InferenceCache, InferenceModel, MarianModel, Mode};

/// A fixture checkpoint as `checkpoint::load_frozen` gives it, in `dtype`: f32 on the CPU decodes
/// on the host-memory cache, f64 on the tensor cache.
fn load_frozen(variant: &str, dtype: DType) -> InferenceModel {
    let dir = fixture_dir(variant);
    let (_, model) = checkpoint::load_frozen(&dir.to_string_lossy(), dtype, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{variant} in {dtype:?}: {e}"));
    model
}

#[test]
fn frozen_logits_match_transformers_and_the_model() {
    for variant in VARIANTS {
        let r = Reference::load(variant);
        let (src, mask, tgt_in) = (
            r.tensor("src_ids"),
            r.tensor("src_mask"),
            r.tensor("tgt_in"),
        );
        let frozen = load_frozen(variant, DType::F32);
        let logits = frozen.forward(&src, &mask, &tgt_in).expect("forward");
        let err = max_abs_diff(&logits, &r.logits);
        assert!(err <= 1e-4, "{variant}: {err} from transformers");
        let (_, model) = checkpoint::load(
            fixture_dir(variant).to_str().expect("utf-8"),
            DType::F32,
            &Device::Cpu,
        )
        .expect("load");
        let plain = model
            .forward(&src, &mask, &tgt_in, Mode::Eval)
            .expect("forward");
        let err = max_abs_diff(&logits, &plain);
        assert!(
            err <= 1e-5,
            "{variant}: frozen and plain layouts differ by {err}"
        );
    }
}

#[test]
fn frozen_incremental_decoding_follows_the_full_pass_through_row_selection() {
    // Both cache kinds, every variant: step through the reference decoder inputs; after step 3
    // keep rows [2, 0, 0] (a reordering, a repeat, row 1 dropped), so every later step must give
    // the full pass's logits of the rows it now holds.
    let both_kinds = VARIANTS.map(|v| [(v, DType::F32), (v, DType::F64)]);
    for (variant, dtype) in both_kinds.into_iter().flatten() {
        let r = Reference::load(variant);
        let model = load_frozen(variant, dtype);
        let (src, mask, tgt_in) = (
            r.tensor("src_ids"),
            r.tensor("src_mask"),
            r.tensor("tgt_in"),
        );
        let enc = model.encode(&src, &mask).expect("encode");
        let full = model.decode(&tgt_in, &enc, &mask).expect("decode");
        let mut cache: InferenceCache = model.new_cache(&enc, &mask).expect("cache");
        let mut rows =
            Tensor::arange(0u32, src.dim(0).expect("B") as u32, &Device::Cpu).expect("rows");
        let t_len = tgt_in.dim(1).expect("T");
        for t in 0..t_len {
            if t == 3 {
                let keep = Tensor::new(&[2u32, 0, 0], &Device::Cpu).expect("keep");
                cache = cache.select(&keep).expect("select");
                rows = rows.index_select(&keep, 0).expect("rows");
                assert_eq!((cache.batch_size(), cache.len()), (3, 3));
                let past_the_end = Tensor::new(&[3u32], &Device::Cpu).expect("row");
                assert!(cache.select(&past_the_end).is_err());
            }
            let tokens = tgt_in.index_select(&rows, 0).and_then(|c| c.i((.., t)));
            let step = model
                .decode_step(&tokens.expect("tokens"), &mut cache)
                .expect("step");
            let want = full.index_select(&rows, 0).and_then(|f| f.i((.., t, ..)));
            let to_f32 = |t: &Tensor| t.to_dtype(DType::F32).expect("f32");
            let err = max_abs_diff(&to_f32(&step), &to_f32(&want.expect("want")));
            assert!(
                err <= 1e-4,
                "{variant} {dtype:?}: step {t} differs by {err}"
            );
        }
        assert_eq!(cache.len(), t_len);
        // A step with the wrong number of tokens is an error, not a panic.
        let one = Tensor::new(&[0u32], &Device::Cpu).expect("token");
        assert!(model.decode_step(&one, &mut cache).is_err());
    }
}

#[test]
fn a_trainable_model_freezes_to_the_same_decoder() {
    // Weights in a VarMap, as the trainer holds them: the frozen copy decodes exactly as a model
    // loaded for inference, and the trainable model's logits do not move.
    let dir = fixture_dir("opus");
    let cfg = checkpoint::load_config(&dir).expect("config");
    let varmap = checkpoint::load_varmap(&dir, &cfg, DType::F32, &Device::Cpu).expect("varmap");
    let model = MarianModel::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .expect("model");
    let r = Reference::load("opus");
    let (src, mask, tgt_in) = (
        r.tensor("src_ids"),
        r.tensor("src_mask"),
        r.tensor("tgt_in"),
    );
    let before = model
        .forward(&src, &mask, &tgt_in, Mode::Eval)
        .expect("forward");
    let frozen = model.freeze().expect("freeze");
    let after = model
        .forward(&src, &mask, &tgt_in, Mode::Eval)
        .expect("forward");
    assert_eq!(max_abs_diff(&before, &after), 0.0);
    let loaded = load_frozen("opus", DType::F32);
    let a = frozen.forward(&src, &mask, &tgt_in).expect("forward");
    let b = loaded.forward(&src, &mask, &tgt_in).expect("forward");
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    // generate on the MarianModel (frozen for the call) and on the frozen model agree exactly.
    let srcs = vec![vec![5u32, 9, 0], vec![7, 0]];
    let cfg = GenerateConfig {
        max_new_tokens: Some(6),
        nbest: 2,
        ..GenerateConfig::default()
    };
    let via_model = generate::generate(&model, &srcs, &cfg).expect("generate");
    let via_frozen = generate::generate(&frozen, &srcs, &cfg).expect("generate");
    assert_eq!(via_model, via_frozen);
}
