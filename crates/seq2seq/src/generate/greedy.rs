//! Greedy search as transformers' `GenerationMixin._sample` runs it without sampling: the arg-max of
//! each row's processed logits, one sentence leaving the batch as soon as it is done.

use super::logits::{argmax, logp, process_row, RowRules, RowScratch};
use super::{length_norm, GenerateConfig, Hypothesis, Result, SpecialTokens, StepDecoder};

pub(super) fn greedy(
    dec: &mut dyn StepDecoder,
    max_new: &[usize],
    cfg: &GenerateConfig,
    sp: SpecialTokens,
) -> Result<Vec<Vec<Hypothesis>>> {
    let n = max_new.len();
    // seqs[i] = [start] + generated tokens of sentence i.
    let mut seqs: Vec<Vec<u32>> = vec![vec![sp.start]; n];
    let mut sums = vec![0f32; n];
    let mut done: Vec<Option<Hypothesis>> = vec![None; n];
    let mut active: Vec<usize> = (0..n).collect();
    let mut scratch = RowScratch::default();
    while !active.is_empty() {
        let tokens: Vec<u32> = active
            .iter()
            .map(|&i| *seqs[i].last().unwrap_or(&sp.start))
            .collect();
        let (mut logits, v) = dec.step(&tokens)?;
        let mut keep: Vec<u32> = Vec::with_capacity(active.len());
        let mut still: Vec<usize> = Vec::with_capacity(active.len());
        for (r, &i) in active.iter().enumerate() {
            let row = &mut logits[r * v..(r + 1) * v];
            let generated = seqs[i].len() - 1;
            let rules = RowRules {
                seq: &seqs[i],
                generated,
                max_new: max_new[i],
            };
            let lp = process_row(row, &rules, cfg, sp, &mut scratch);
            let (tok, tok_lp) = match lp.forced {
                Some(t) => (t, 0.0),
                None => {
                    let (t, x) = argmax(row);
                    (t, logp(x, lp.norm))
                }
            };
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
        if !still.is_empty() && still.len() != active.len() {
            dec.select(&keep, false)?;
        }
        active = still;
    }
    Ok(done.into_iter().map(|h| h.into_iter().collect()).collect())
}
