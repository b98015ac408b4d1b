//! One training step (forward, loss, backward, global-norm clip, AdamW) of a Marian model, timed
//! the way ../shared/peers/bench_train.py times PyTorch: median over `--steps` after `--warmup`,
//! random batches of `--batch` sentences, lengths uniform in [ceil(min_frac·L), L] with a final
//! `</s>`, tokens uniform in [2, V-2]. Prints one JSON line (median step, tokens/s, peak RSS).
//!
//!   cargo run --release -p rdrop-train --example bench_step -- --model-dir DIR --mode rdrop

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rdrop_seq2seq::dropout::{DropoutRng, Mode};
use rdrop_seq2seq::model::MarianModel;
use rdrop_train::data::{make_batch, Example};
use rdrop_train::optim::{self, AdamW};
use rdrop_train::recipe::OptimizerSection;
use std::time::Instant;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `rdrop train` runs (the peer keeps its allocator's defaults too).
    rdrop_train::malloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(arg(
        &args,
        "--model-dir",
        String::from("peers-work/tiny-marian"),
    ));
    let mode: String = arg(&args, "--mode", String::from("ce"));
    let (b, l, steps, warmup) = (
        arg(&args, "--batch", 32usize),
        arg(&args, "--len", 32usize),
        arg(&args, "--steps", 20usize),
        arg(&args, "--warmup", 3usize),
    );
    let alpha = arg(&args, "--alpha", 5.0f64);
    let min_frac = arg(&args, "--min-frac", 0.5f64);
    let device = Device::Cpu;
    let cfg = rdrop_seq2seq::checkpoint::load_config(&dir)?;
    let weights = rdrop_seq2seq::checkpoint::weights_in(&dir)?;
    let varmap = rdrop_seq2seq::checkpoint::load_varmap(&weights, &cfg, DType::F32, &device)?;
    let model = MarianModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let mut vars = varmap.data().lock().map_err(|_| "poisoned")?.clone();
    vars.retain(|k, _| k != "final_logits_bias");
    let ocfg = OptimizerSection {
        lr: 5e-5,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = AdamW::new(&vars, &ocfg)?;
    let crit = match mode.as_str() {
        "rdrop" => rdrop_loss::CriterionConfig::RDrop { eps: 0.1, alpha },
        _ => rdrop_loss::CriterionConfig::LabelSmoothedCe { eps: 0.1 },
    }
    .build(cfg.pad_token_id)?;
    let v = cfg.vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let lo = ((min_frac * l as f64).ceil() as usize).max(2);
    let side = |rng: &mut rand_chacha::ChaCha8Rng| -> Vec<u32> {
        let n = rng.gen_range(lo..=l);
        let mut s: Vec<u32> = (0..n - 1).map(|_| rng.gen_range(2..v - 1)).collect();
        s.push(cfg.eos_token_id);
        s
    };
    let dropout = DropoutRng::new(0);
    let mut times = Vec::new();
    let mut tgt_tokens = 0usize;
    let mut last = (0.0, 0.0);
    for i in 0..warmup + steps {
        let ex: Vec<Example> = (0..b)
            .map(|_| Example {
                source: side(&mut rng),
                target: side(&mut rng),
            })
            .collect();
        let idx: Vec<usize> = (0..b).collect();
        let batch = make_batch(
            &ex,
            &idx,
            cfg.pad_token_id,
            cfg.decoder_start_token_id,
            &device,
        )?;
        let t0 = Instant::now();
        let logits = if crit.needs_doubled_batch() {
            let d = rdrop_loss::duplicate_all(&[&batch.src_ids, &batch.src_mask, &batch.tgt_in])?;
            model.forward(&d[0], &d[1], &d[2], Mode::Train(&dropout))?
        } else {
            model.forward(
                &batch.src_ids,
                &batch.src_mask,
                &batch.tgt_in,
                Mode::Train(&dropout),
            )?
        };
        let parts = crit.loss(&logits, &batch.labels)?;
        let grads = parts.loss.backward()?;
        let mut g = opt.grads_from(&grads);
        optim::clip_grad_norm(&mut g, 0.0)?;
        opt.step(&g, 5e-5)?;
        let vals = parts.values()?;
        let dt = t0.elapsed().as_secs_f64();
        if i >= warmup {
            times.push(dt);
            tgt_tokens += batch.tgt_tokens;
        }
        last = (vals.loss, vals.kl.unwrap_or(0.0));
        let _ = Tensor::zeros(1, DType::F32, &device)?;
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let med = sorted[sorted.len() / 2];
    let n_tgt = tgt_tokens as f64 / steps.max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "train", "impl": "rdrop", "mode": mode, "model_dir": dir.display().to_string(),
            "batch": b, "rows": if crit.needs_doubled_batch() { 2 * b } else { b }, "len": l,
            "steps": steps, "warmup": warmup,
            "median_step_s": (med * 1e4).round() / 1e4,
            "min_step_s": (sorted[0] * 1e4).round() / 1e4,
            "tgt_tokens_per_step": n_tgt, "tgt_tokens_per_s": (n_tgt / med * 10.0).round() / 10.0,
            "peak_rss_mib": (peak_rss_mib() * 10.0).round() / 10.0,
            "last_loss": last.0, "last_kl": last.1,
            "threads": std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        })
    );
    Ok(())
}
