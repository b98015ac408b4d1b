//! Greedy search as transformers' `GenerationMixin._sample` runs it without sampling: the arg-max of
//! each row's processed logits, one sentence leaving the batch as soon as it is done.

use super::logits::{argmax, logp, process_row, RowRules, RowScratch};
use super::{
    forced_eos, length_norm, top_request, GenerateConfig, Hypothesis, Result, SpecialTokens,
    StepDecoder,
};

/// `top`: take each row's best token from [`StepDecoder::step_top`] instead of whole logits.
pub(super) fn greedy(
    dec: &mut dyn StepDecoder,
    max_new: &[usize],
    cfg: &GenerateConfig,
    sp: SpecialTokens,
    top: bool,
) -> Result<Vec<Vec<Hypothesis>>> {
    let n = max_new.len();
    // seqs[i] = [start] + generated tokens of sentence i.
    let mut seqs: Vec<Vec<u32>> = vec![vec![sp.start]; n];
    let mut sums = vec![0f32; n];
    let mut done: Vec<Option<Hypothesis>> = vec![None; n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut scratch = RowScratch::default();
    // Every live sentence has generated as many tokens as the others: they started together.
    let mut generated = 0usize;
    let mut picks: Vec<(u32, f32)> = Vec::with_capacity(n);
    while !active.is_empty() {
        let tokens: Vec<u32> = active
            .iter()
            .map(|&i| *seqs[i].last().unwrap_or(&sp.start))
            .collect();
        picks.clear();
        if top {
            let req = top_request(cfg, sp, generated, 1);
            let stats = dec.step_top(&tokens, &req)?;
            for (&i, o) in active.iter().zip(stats.chunks_exact(req.width())) {
                picks.push(if forced_eos(cfg, generated, max_new[i]) {
                    (sp.eos, 0.0)
                } else {
                    // [norm, best value, best token]
                    (o[2] as u32, logp(o[1], o[0]))
                });
            }
        } else {
            let (mut logits, v) = dec.step(&tokens)?;
            for (r, &i) in active.iter().enumerate() {
                let row = &mut logits[r * v..(r + 1) * v];
                let rules = RowRules {
                    seq: &seqs[i],
                    generated,
                    max_new: max_new[i],
                };
                let lp = process_row(row, &rules, cfg, sp, &mut scratch);
                picks.push(match lp.forced {
                    Some(t) => (t, 0.0),
                    None => {
                        let (t, x) = argmax(row);
                        (t, logp(x, lp.norm))
                    }
                });
            }
        }
        let mut keep: Vec<u32> = Vec::with_capacity(active.len());
        let mut still: Vec<usize> = Vec::with_capacity(active.len());
        for (r, (&i, &(tok, tok_lp))) in active.iter().zip(&picks).enumerate() {
            seqs[i].push(tok);
            sums[i] += tok_lp;
            let len = generated + 1;
            if tok == sp.eos || len >= max_new[i] {
                done[i] = Some(Hypothesis {
                    tokens: seqs[i][1..].to_vec(),
                    score: sums[i] / length_norm(len, cfg.lenpen),
                });
            } else {
                keep.push(r as u32);
                still.push(i);
            }
        }
        generated += 1;
        if !still.is_empty() && still.len() != active.len() {
            dec.select(&keep, false)?;
        }
        active = still;
    }
    Ok(done.into_iter().map(|h| h.into_iter().collect()).collect())
}
