//! Beam search as transformers' `_beam_search` and `BeamSearchScorer` run it: `2 × beam`
//! candidates per step, finished hypotheses kept best first, the three `early_stopping` rules.

use super::logits::{logp, process_row, RowRules, RowScratch};
use super::top_k::fill_top_k;
use super::{
    forced_eos, length_norm, top_request, EarlyStopping, GenerateConfig, Hypothesis, Result,
    SpecialTokens, StepDecoder,
};

/// Beam state of one sentence.
struct BeamSentence {
    /// Running beams: `[start] + generated`, all the same length.
    seqs: Vec<Vec<u32>>,
    /// Running beams' summed log-probabilities (`running_beam_scores`).
    scores: Vec<f32>,
    /// Finished hypotheses, best first, at most `beam` (`sequences` with `is_sent_finished`).
    finished: Vec<Hypothesis>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`.
    may_improve: bool,
}

/// A continuation candidate: `acc` = running score + token log-prob.
#[derive(Clone, Copy)]
struct Cand {
    acc: f32,
    beam: u32,
    token: u32,
}

/// What a step gave the search: whole logits `[rows, vocab]`, or per row the normaliser and best
/// candidates from [`StepDecoder::step_top`] (`width` floats).
enum Step {
    Logits(Vec<f32>, usize),
    Top(Vec<f32>, usize),
}

/// `top`: take each row's candidates from [`StepDecoder::step_top`] instead of whole logits.
pub(super) fn beam_search(
    dec: &mut dyn StepDecoder,
    max_new: &[usize],
    cfg: &GenerateConfig,
    sp: SpecialTokens,
    top: bool,
) -> Result<Vec<Vec<Hypothesis>>> {
    let k = cfg.beam;
    let n = max_new.len();
    let n_cand = 2 * k;
    // transformers starts every sentence with `k` identical beams, all but the first scored -1e9, so
    // the first step draws every candidate from beam 0 (a vocabulary always has more than `2k`
    // allowed tokens). Running that step on one row per sentence gives the same candidates.
    let mut sents: Vec<BeamSentence> = (0..n)
        .map(|_| BeamSentence {
            seqs: vec![vec![sp.start]],
            scores: vec![0.0],
            finished: Vec::with_capacity(k),
            may_improve: true,
        })
        .collect();
    let mut active: Vec<usize> = (0..n).collect();
    let mut done: Vec<Vec<Hypothesis>> = vec![Vec::new(); n];
    let mut scratch = RowScratch::default();
    let mut row_top: Vec<(f32, u32)> = Vec::with_capacity(n_cand + 1);
    let mut cands: Vec<Cand> = Vec::with_capacity(k * n_cand);
    let mut generated = 0usize;
    while !active.is_empty() {
        let tokens: Vec<u32> = active
            .iter()
            .flat_map(|&i| sents[i].seqs.iter().map(|s| *s.last().unwrap_or(&sp.start)))
            .collect();
        let mut step = if top {
            let req = top_request(cfg, sp, generated, n_cand);
            Step::Top(dec.step_top(&tokens, &req)?, req.width())
        } else {
            let (logits, v) = dec.step(&tokens)?;
            Step::Logits(logits, v)
        };
        let mut next_rows: Vec<u32> = Vec::with_capacity(active.len() * k);
        let mut still: Vec<usize> = Vec::with_capacity(active.len());
        let mut row0 = 0usize;
        for &i in active.iter() {
            let s = &mut sents[i];
            let rows = s.seqs.len();
            cands.clear();
            for b in 0..rows {
                let r = row0 + b;
                let (forced, norm) = match &mut step {
                    Step::Logits(logits, v) => {
                        let row = &mut logits[r * *v..(r + 1) * *v];
                        let rules = RowRules {
                            seq: &s.seqs[b],
                            generated,
                            max_new: max_new[i],
                        };
                        let lp = process_row(row, &rules, cfg, sp, &mut scratch);
                        if lp.forced.is_none() {
                            fill_top_k(row, n_cand, &mut row_top);
                        }
                        (lp.forced, lp.norm)
                    }
                    Step::Top(stats, w) => {
                        // [norm, n_cand values, n_cand tokens]
                        let o = &stats[r * *w..(r + 1) * *w];
                        row_top.clear();
                        row_top.extend((0..n_cand).map(|q| (o[1 + q], o[1 + n_cand + q] as u32)));
                        (
                            forced_eos(cfg, generated, max_new[i]).then_some(sp.eos),
                            o[0],
                        )
                    }
                };
                let base = s.scores[b];
                if let Some(t) = forced {
                    // transformers: every other token is -inf; they can never be chosen.
                    cands.push(Cand {
                        acc: base,
                        beam: b as u32,
                        token: t,
                    });
                    continue;
                }
                for &(x, t) in &row_top {
                    cands.push(Cand {
                        acc: logp(x, norm) + base,
                        beam: b as u32,
                        token: t,
                    });
                }
            }
            // torch.topk over the flattened [beam × vocab] scores: best first; ties to the lower
            // flat index.
            cands.sort_by(|x, y| {
                y.acc
                    .partial_cmp(&x.acc)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then((x.beam, x.token).cmp(&(y.beam, y.token)))
            });
            cands.truncate(n_cand);
            let len = generated + 1;
            let at_limit = len >= max_new[i];
            let hits: Vec<bool> = cands
                .iter()
                .map(|c| c.token == sp.eos || at_limit)
                .collect();

            // Finished hypotheses: only among the best `k` candidates, and only while the sentence may
            // still improve (transformers adds -1e9 otherwise).
            let full = s.finished.len() == k;
            let accepting = s.may_improve && !(cfg.early_stopping == EarlyStopping::Eager && full);
            if accepting {
                let norm = length_norm(len, cfg.lenpen);
                for (c, cand) in cands.iter().enumerate().take(k) {
                    if !hits[c] {
                        continue;
                    }
                    let score = cand.acc / norm;
                    // Existing entries win ties (they come first in transformers' concatenation).
                    let pos = s.finished.partition_point(|h| h.score >= score);
                    if pos >= k {
                        continue;
                    }
                    let mut tokens = s.seqs[cand.beam as usize][1..].to_vec();
                    tokens.push(cand.token);
                    s.finished.insert(pos, Hypothesis { tokens, score });
                    s.finished.truncate(k);
                }
            }

            // Next running beams: the best `k` candidates that did not stop (stopped ones are pushed
            // down by -1e9, as in transformers).
            let mut order: Vec<(f32, usize)> = cands
                .iter()
                .enumerate()
                .map(|(c, cand)| (if hits[c] { cand.acc + -1.0e9 } else { cand.acc }, c))
                .collect();
            order.sort_by(|x, y| {
                y.0.partial_cmp(&x.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(x.1.cmp(&y.1))
            });
            let mut new_seqs = Vec::with_capacity(k);
            let mut new_scores = Vec::with_capacity(k);
            let mut src_rows = Vec::with_capacity(k);
            for &(val, c) in order.iter().take(k) {
                let cand = cands[c];
                let mut seq = s.seqs[cand.beam as usize].clone();
                seq.push(cand.token);
                new_seqs.push(seq);
                new_scores.push(val);
                src_rows.push((row0 as u32) + cand.beam);
            }
            s.seqs = new_seqs;
            s.scores = new_scores;
            row0 += rows;

            // transformers' `_check_early_stop_heuristic` (after `cur_len += 1`).
            if s.finished.len() == k {
                let hyp_len = if cfg.early_stopping == EarlyStopping::Never && cfg.lenpen > 0.0 {
                    max_new[i]
                } else {
                    len
                };
                let best_possible = s.scores[0] / length_norm(hyp_len, cfg.lenpen);
                let worst = s
                    .finished
                    .iter()
                    .map(|h| h.score)
                    .fold(f32::INFINITY, f32::min);
                if best_possible <= worst {
                    s.may_improve = false;
                }
            }
            let finished_all = cfg.early_stopping == EarlyStopping::Eager && s.finished.len() == k;
            if !s.may_improve || finished_all || at_limit {
                done[i] = std::mem::take(&mut s.finished);
                done[i].truncate(cfg.nbest);
                s.seqs = Vec::new();
            } else {
                next_rows.extend_from_slice(&src_rows);
                still.push(i);
            }
        }
        // After the first step (one row per sentence) rows are expanded to `k` per sentence.
        let same_sources = generated > 0 && still.len() == active.len();
        generated += 1;
        if !still.is_empty() {
            dec.select(&next_rows, same_sources)?;
        }
        active = still;
    }
    Ok(done)
}
