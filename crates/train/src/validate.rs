//! Validation of a live run: loss and NLL in eval mode, BLEU and chrF of decoded output, and the
//! dropout-consistency diagnostic (symmetric KL of two train-mode passes).

use crate::checkpoint::TrainerState;
use crate::data::{self, Example};
use crate::error::Result;
use crate::recipe::{DecodeKind, ValidMetric};
use crate::session::{detached_model, frozen_model, model_loss, Session};
use rdrop_loss::{CriterionConfig, LossSums};
use rdrop_seq2seq::dropout::{DropoutRng, Mode};

/// One validation result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Validation {
    /// Label-smoothed CE per target token (one eval-mode pass).
    pub loss: f64,
    /// Plain NLL per target token.
    pub nll: f64,
    /// Corpus BLEU (0–100), when `bleu` is among the metrics and the set is not empty.
    pub bleu: Option<f64>,
    /// Corpus chrF (0–100), when `chrf` is among the metrics and the set is not empty.
    pub chrf: Option<f64>,
    /// Mean per-token symmetric KL between two train-mode passes (`validation.consistency`).
    pub consistency_kl: Option<f64>,
    /// Validation pairs evaluated.
    pub sentences: usize,
}

/// Translates token-id sources with the model crate's search (beam 1 = greedy), batched by
/// length; returns detokenised text in input order. Length limit: 1.5 × source + `extra` tokens.
pub fn translate_ids(
    s: &Session,
    sources: &[Vec<u32>],
    beam: usize,
    batch_size: usize,
    extra: usize,
) -> Result<Vec<String>> {
    use rdrop_seq2seq::generate::{generate, GenerateConfig};
    let cfg = GenerateConfig {
        beam: beam.max(1),
        max_len_a: 1.5,
        max_len_b: extra,
        ..GenerateConfig::default()
    };
    let model = frozen_model(s)?;
    let mut out = vec![String::new(); sources.len()];
    // Sorting by length keeps padding (and wasted decoding) low; results return to their slots.
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| sources[i].len());
    for chunk in order.chunks(batch_size.max(1)) {
        let srcs: Vec<Vec<u32>> = chunk.iter().map(|&i| sources[i].clone()).collect();
        let hyps = generate(&model, &srcs, &cfg)?;
        for (&i, h) in chunk.iter().zip(hyps) {
            let tokens = h.into_iter().next().map(|h| h.tokens).unwrap_or_default();
            out[i] = s.tokenizer.decode(&tokens)?;
        }
    }
    Ok(out)
}

/// Translates with the recipe's validation decoder (greedy or beam).
pub fn translate(s: &Session, sources: &[Vec<u32>]) -> Result<Vec<String>> {
    let v = &s.recipe.validation;
    let beam = match v.decode {
        DecodeKind::Greedy => 1,
        DecodeKind::Beam => v.beam_size,
    };
    translate_ids(s, sources, beam, v.batch_size, v.max_decode_len)
}

/// Corpus BLEU (sacreBLEU defaults: 13a, exp smoothing) of hypotheses against one reference set.
pub fn corpus_bleu(hyps: &[String], refs: &[String]) -> Result<f64> {
    let bleu = rdrop_bleu::Bleu::new(rdrop_bleu::BleuConfig::default(), &[refs.to_vec()])?;
    Ok(bleu.corpus_score(hyps)?.score)
}

/// Validation loss (eval mode, one pass, label-smoothed CE) and optionally BLEU.
pub fn validate(
    s: &Session,
    valid: &[Example],
    refs: &[String],
    metrics: &[ValidMetric],
) -> Result<Validation> {
    let pad = s.tokenizer.pad_id();
    // One pass of the run's label smoothing, whatever the training criterion.
    let ce = CriterionConfig::LabelSmoothedCe {
        eps: s.recipe.criterion.label_smoothing,
    }
    .build(pad)?;
    let mut sums = LossSums::default();
    let idx: Vec<usize> = (0..valid.len()).collect();
    for chunk in idx.chunks(s.recipe.validation.batch_size) {
        let b = data::make_batch(valid, chunk, pad, s.cfg.decoder_start_token_id, &s.device)?;
        sums.add(&LossSums::of(&model_loss(
            &s.model,
            ce.as_ref(),
            &b,
            Mode::Eval,
        )?)?);
    }
    let (mut bleu, mut chrf) = (None, None);
    if metrics.iter().any(|m| m.needs_decoding()) && !valid.is_empty() {
        let sources: Vec<Vec<u32>> = valid.iter().map(|e| e.source.clone()).collect();
        let hyps = translate(s, &sources)?;
        if metrics.contains(&ValidMetric::Bleu) {
            bleu = Some(corpus_bleu(&hyps, refs)?);
        }
        if metrics.contains(&ValidMetric::Chrf) {
            let c = rdrop_bleu::Chrf::new(rdrop_bleu::ChrfConfig::default(), &[refs.to_vec()])?;
            chrf = Some(c.corpus_score(&hyps)?);
        }
    }
    let means = sums.means();
    Ok(Validation {
        loss: means.loss,
        nll: means.nll,
        bleu,
        chrf,
        consistency_kl: None,
        sentences: valid.len(),
    })
}

impl Validation {
    /// The line the log shows for this validation at `update` (`secs`: how long it took).
    pub fn line(&self, update: u64, improved: bool, secs: f64) -> String {
        format!(
            "valid at update {}: loss {:.4} nll {:.4}{}{}{}{} ({:.1}s)",
            update,
            self.loss,
            self.nll,
            self.bleu
                .map(|b| format!(" BLEU {b:.2}"))
                .unwrap_or_default(),
            self.chrf
                .map(|c| format!(" chrF {c:.2}"))
                .unwrap_or_default(),
            self.consistency_kl
                .map(|k| format!(" dropout-KL {k:.4}"))
                .unwrap_or_default(),
            if improved { " (best)" } else { "" },
            secs
        )
    }

    /// The metrics.jsonl record of this validation, with the run's position and best value.
    pub fn record(&self, st: &TrainerState, best_by: ValidMetric, wall: f64) -> serde_json::Value {
        serde_json::json!({
            "kind": "valid", "update": st.update, "epoch": st.epoch + 1,
            "loss": self.loss, "nll": self.nll, "bleu": self.bleu, "chrf": self.chrf,
            "best_by": best_by.name(), "best_value": st.best_value,
            "consistency_kl": self.consistency_kl, "sentences": self.sentences,
            "tokens_seen": st.tokens_seen, "wall_s": wall,
        })
    }

    /// The value of one metric, if it was computed.
    pub fn metric(&self, m: ValidMetric) -> Option<f64> {
        match m {
            ValidMetric::Bleu => self.bleu,
            ValidMetric::Chrf => self.chrf,
            ValidMetric::Loss => Some(self.loss),
            ValidMetric::Nll => Some(self.nll),
        }
    }
}

/// Dropout consistency on `valid`: every batch stacked on itself and run once in train mode, as
/// R-Drop trains, giving the mean over target tokens of (KL(P1‖P2) + KL(P2‖P1)) / 2 — the term
/// R-Drop's α weighs. Masks come from their own generator seeded with `seed`, so measuring leaves
/// the training run's dropout stream (and a resume's bit-identity) untouched.
pub fn dropout_consistency(s: &Session, valid: &[Example], seed: u64) -> Result<f64> {
    let pad = s.tokenizer.pad_id();
    let kl = CriterionConfig::RDrop {
        eps: s.recipe.criterion.label_smoothing,
        alpha: 1.0,
    }
    .build(pad)?;
    let model = detached_model(s)?;
    let rng = DropoutRng::new(seed);
    let mut sums = LossSums::default();
    let idx: Vec<usize> = (0..valid.len()).collect();
    for chunk in idx.chunks(s.recipe.validation.batch_size) {
        let b = data::make_batch(valid, chunk, pad, s.cfg.decoder_start_token_id, &s.device)?;
        rng.seed_device(&s.device)?;
        sums.add(&LossSums::of(&model_loss(
            &model,
            kl.as_ref(),
            &b,
            Mode::Train(&rng),
        )?)?);
    }
    Ok(sums.means().kl.unwrap_or(0.0))
}
