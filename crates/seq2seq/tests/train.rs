//! Training behaviour: gradients reach every parameter, dropout is active only in train mode and is
//! reproducible from its seed (including after saving and restoring the generator's state).

mod common;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use common::{fixture_dir, max_abs_diff, Reference, VARIANTS};
use rdrop_seq2seq::{checkpoint, Config, DropoutRng, MarianModel, Mode};

fn trainable(variant: &str) -> (Config, candle_nn::VarMap, MarianModel) {
    trainable_in(variant, DType::F32)
}

fn trainable_in(variant: &str, dtype: DType) -> (Config, candle_nn::VarMap, MarianModel) {
    let dir = fixture_dir(variant);
    let cfg = checkpoint::load_config(&dir).expect("config");
    let varmap = checkpoint::load_varmap(&dir, &cfg, dtype, &Device::Cpu).expect("varmap");
    let model = MarianModel::new(&cfg, VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu))
        .expect("model");
    (cfg, varmap, model)
}

fn logits(model: &MarianModel, r: &Reference, mode: Mode) -> Tensor {
    model
        .forward(
            &r.tensor("src_ids"),
            &r.tensor("src_mask"),
            &r.tensor("tgt_in"),
            mode,
        )
        .expect("forward")
}

/// Summed negative log-likelihood of the non-pad labels.
fn nll(logits: &Tensor, r: &Reference) -> Tensor {
    let lp = candle_nn::ops::log_softmax(logits, D::Minus1).expect("log_softmax");
    let labels = r.tensor("labels").unsqueeze(2).expect("unsqueeze");
    let picked = lp
        .gather(&labels, 2)
        .expect("gather")
        .squeeze(2)
        .expect("squeeze");
    let mask = r.tensor("tgt_mask").to_dtype(logits.dtype()).expect("mask");
    (picked * mask)
        .expect("mul")
        .sum_all()
        .expect("sum")
        .neg()
        .expect("neg")
}

#[test]
fn every_parameter_but_the_logits_bias_buffer_gets_a_nonzero_gradient() {
    for variant in VARIANTS {
        let (_, varmap, model) = trainable(variant);
        let r = Reference::load(variant);
        let rng = DropoutRng::new(1);
        let loss = nll(&logits(&model, &r, Mode::Train(&rng)), &r);
        let grads = loss.backward().expect("backward");
        let vars = varmap.data().lock().expect("lock").clone();
        assert!(vars.len() > 20, "{variant}: only {} variables", vars.len());
        let mut names: Vec<_> = vars.keys().cloned().collect();
        names.sort();
        for name in names {
            if name == "final_logits_bias" {
                // A registered buffer in transformers, not a parameter: it must stay fixed.
                assert!(
                    grads.get(vars[&name].as_tensor()).is_none(),
                    "{variant}: final_logits_bias got a gradient"
                );
                continue;
            }
            let g = grads
                .get(vars[&name].as_tensor())
                .unwrap_or_else(|| panic!("{variant}: no gradient for {name}"));
            let norm = g
                .abs()
                .expect("abs")
                .sum_all()
                .expect("sum")
                .to_scalar::<f32>()
                .expect("scalar");
            assert!(norm > 0.0, "{variant}: zero gradient for {name}");
        }
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    // Central differences of the eval-mode NLL in f64, at a few coordinates of every kind of
    // parameter: the layer-norm and bias-add kernels' own backward passes included.
    for variant in ["opus", "untied-relu"] {
        let (_, varmap, model) = trainable_in(variant, DType::F64);
        let r = Reference::load(variant);
        let loss = |m: &MarianModel| {
            let l = logits(m, &r, Mode::Eval);
            nll(&l, &r).to_scalar::<f64>().expect("scalar")
        };
        let l0 = nll(&logits(&model, &r, Mode::Eval), &r);
        let grads = l0.backward().expect("backward");
        let vars = varmap.data().lock().expect("lock").clone();
        let mut checked = 0;
        for (name, var) in &vars {
            let kind = [
                "layer_norm.weight",
                "layer_norm.bias",
                "q_proj.bias",
                "fc1.weight",
                "fc2.bias",
                "out_proj.weight",
                "embed_tokens.weight",
                "shared.weight",
            ];
            let first_layer_or_table = name.contains("layers.0.") || !name.contains("layers.");
            if !kind.iter().any(|k| name.ends_with(k)) || !first_layer_or_table {
                continue;
            }
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{variant}: no gradient for {name}"))
                .flatten_all()
                .expect("flatten")
                .to_vec1::<f64>()
                .expect("vec");
            let base = var
                .as_tensor()
                .flatten_all()
                .expect("flatten")
                .to_vec1::<f64>()
                .expect("vec");
            // The coordinate with the largest gradient and one fixed other.
            let top = g
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map(|(i, _)| i)
                .unwrap_or(0);
            for i in [top, base.len() / 3] {
                let h = 1e-5;
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).expect("tensor"))
                        .expect("set");
                    loss(&model)
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                at(0.0);
                assert!(
                    (fd - g[i]).abs() <= 1e-5 * (1.0 + fd.abs()),
                    "{variant} {name}[{i}]: autograd {} vs finite difference {fd}",
                    g[i]
                );
                checked += 1;
            }
        }
        assert!(
            checked >= 10,
            "{variant}: only {checked} coordinates checked"
        );
    }
}

#[test]
fn the_pad_embedding_row_gets_no_gradient_as_in_pytorch() {
    // nn.Embedding(padding_idx=pad) never updates the pad row (Marian's decoder start token too). In
    // the untied variant the embeddings are only looked up, so their pad rows must get exactly zero.
    let (cfg, varmap, model) = trainable("untied-relu");
    let r = Reference::load("untied-relu");
    let rng = DropoutRng::new(3);
    let grads = nll(&logits(&model, &r, Mode::Train(&rng)), &r)
        .backward()
        .expect("backward");
    let vars = varmap.data().lock().expect("lock").clone();
    let pad = cfg.pad_token_id as usize;
    let src = r.rows_u32("src_ids");
    for key in [
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
    ] {
        let g = grads
            .get(vars[key].as_tensor())
            .expect("grad")
            .to_vec2::<f32>()
            .expect("rows");
        assert!(
            g[pad].iter().all(|v| *v == 0.0),
            "{key}: pad row has a gradient"
        );
        let used = src[0][0] as usize;
        if key.contains("encoder") {
            assert!(
                g[used].iter().any(|v| *v != 0.0),
                "{key}: row {used} has no gradient"
            );
        }
    }
}

#[test]
fn train_mode_is_random_and_eval_mode_is_deterministic() {
    let (_, _, model) = trainable("opus");
    let r = Reference::load("opus");
    let rng = DropoutRng::new(7);
    let a = logits(&model, &r, Mode::Train(&rng));
    let b = logits(&model, &r, Mode::Train(&rng));
    assert!(
        max_abs_diff(&a, &b) > 1e-3,
        "two train-mode passes gave the same logits"
    );
    let e1 = logits(&model, &r, Mode::Eval);
    let e2 = logits(&model, &r, Mode::Eval);
    assert_eq!(max_abs_diff(&e1, &e2), 0.0);
    assert!(
        max_abs_diff(&a, &e1) > 1e-3,
        "train mode equals eval mode: dropout is not applied"
    );
}

#[test]
fn same_seed_same_masks_and_state_resumes_exactly() {
    let (_, _, model) = trainable("opus");
    let r = Reference::load("opus");
    let a = DropoutRng::new(42);
    let b = DropoutRng::new(42);
    assert_eq!(
        max_abs_diff(
            &logits(&model, &r, Mode::Train(&a)),
            &logits(&model, &r, Mode::Train(&b))
        ),
        0.0
    );
    // Save the position mid-run (through JSON, as a checkpoint would), resume, and compare.
    let state = serde_json::to_string(&a.state()).expect("serialise");
    let next = logits(&model, &r, Mode::Train(&a));
    let resumed = DropoutRng::from_state(serde_json::from_str(&state).expect("deserialise"));
    assert_eq!(
        max_abs_diff(&next, &logits(&model, &r, Mode::Train(&resumed))),
        0.0
    );
    let other = DropoutRng::new(43);
    assert!(max_abs_diff(&next, &logits(&model, &r, Mode::Train(&other))) > 1e-3);
}

#[test]
fn dropout_masks_have_the_configured_rate_and_scale() {
    let rng = DropoutRng::new(5);
    let p = 0.3;
    let m = rng
        .mask((200, 500), p, DType::F32, &Device::Cpu)
        .expect("mask")
        .flatten_all()
        .expect("flat");
    let v = m.to_vec1::<f32>().expect("values");
    let zeros = v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64;
    let kept: Vec<f32> = v.iter().copied().filter(|x| *x != 0.0).collect();
    assert!((zeros - p).abs() < 0.01, "dropped fraction {zeros}");
    assert!(
        kept.iter().all(|x| (*x - 1.0 / 0.7).abs() < 1e-6),
        "kept values scaled by 1/(1-p)"
    );
    let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
    assert!((mean - 1.0).abs() < 0.02, "mask mean {mean}");
}

#[test]
fn the_train_flag_reaches_attention_and_activation_dropout() {
    // With only attention_dropout (or only activation_dropout) set, train mode must still differ.
    for key in ["attention_dropout", "activation_dropout"] {
        let dir = fixture_dir("opus");
        let mut cfg = checkpoint::load_config(&dir).expect("config");
        cfg.dropout = 0.0;
        cfg.attention_dropout = 0.0;
        cfg.activation_dropout = 0.0;
        match key {
            "attention_dropout" => cfg.attention_dropout = 0.5,
            _ => cfg.activation_dropout = 0.5,
        }
        let tensors =
            checkpoint::load_tensors(&dir, &cfg, DType::F32, &Device::Cpu).expect("tensors");
        let model = MarianModel::new(
            &cfg,
            VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        )
        .expect("model");
        let r = Reference::load("opus");
        let rng = DropoutRng::new(9);
        let diff = max_abs_diff(
            &logits(&model, &r, Mode::Train(&rng)),
            &logits(&model, &r, Mode::Eval),
        );
        assert!(diff > 1e-3, "{key} has no effect in train mode");
    }
}

/// Timing of one training step at the size the project's speed notes use (d_model 256, 4 heads, 3+3
/// layers, ffn 1024, vocab 8000, batch 32 x 32, dropout 0.1). Not a check: run it with
/// `cargo test --release -p rdrop-seq2seq --test train -- --ignored --nocapture step_timing`.
#[test]
#[ignore]
fn step_timing() {
    use std::time::Instant;
    let cfg = Config::from_json_str(
        r#"{"vocab_size": 8000, "d_model": 256, "encoder_layers": 3, "decoder_layers": 3,
            "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 1024,
            "decoder_ffn_dim": 1024, "pad_token_id": 7999, "decoder_start_token_id": 7999,
            "activation_function": "swish", "scale_embedding": true, "max_position_embeddings": 512}"#,
        std::path::Path::new("inline"),
    )
    .expect("config");
    let varmap = candle_nn::VarMap::new();
    let model = MarianModel::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .expect("model");
    let (b, t) = (32usize, 32usize);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7919 % 7990) as u32 + 2).collect();
    let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu).expect("ids");
    let mask = Tensor::ones((b, t), DType::U32, &Device::Cpu).expect("mask");
    let rng = DropoutRng::new(0);
    for step in 0..4 {
        let t0 = Instant::now();
        let logits = model
            .forward(&ids, &mask, &ids, Mode::Train(&rng))
            .expect("forward");
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).expect("lsm");
        let loss = lp
            .gather(&ids.unsqueeze(2).expect("u"), 2)
            .expect("g")
            .sum_all()
            .expect("s")
            .neg()
            .expect("n");
        let t1 = Instant::now();
        let _grads = loss.backward().expect("backward");
        let t2 = Instant::now();
        println!(
            "step {step}: forward {:.3}s backward {:.3}s",
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64()
        );
    }
}
