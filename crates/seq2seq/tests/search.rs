//! Greedy and beam search on a scripted step decoder: every expected hypothesis and score below is
//! worked out by hand from the scripted probabilities (the arithmetic is in the comments).
//!
//! The decoder's logits are natural logs of probabilities that sum to 1, so a token's log-probability
//! is the log of its scripted probability. Vocabulary: 0 `</s>`, 1 `<pad>` (also the decoder start
//! token, as in Marian), 2..=5 the words a, b, c, d. Unless a test says otherwise, no logits
//! processor is on (no forced `</s>`, no `<pad>` ban, no renormalisation) and the length penalty
//! is 1.

use rdrop_seq2seq::generate::{
    search, EarlyStopping, GenerateConfig, GenerateError, Hypothesis, SpecialTokens, StepDecoder,
};

const EOS: u32 = 0;
const PAD: u32 = 1;
const A: u32 = 2;
const B: u32 = 3;
const C: u32 = 4;
const D: u32 = 5;
const VOCAB: usize = 6;
const SPECIAL: SpecialTokens = SpecialTokens {
    eos: EOS,
    pad: PAD,
    start: PAD,
};

/// Next-token probabilities of sentence `s` after its generated tokens (start token excluded):
/// `(token, p)` pairs; the probability left over is shared equally by the unlisted tokens.
type Script = fn(usize, &[u32]) -> Vec<(u32, f64)>;

/// A step decoder that answers from a script and records what the search asked of it.
struct Scripted {
    script: Script,
    /// Per live row: its sentence and the tokens fed to it so far (the start token first).
    rows: Vec<(usize, Vec<u32>)>,
    /// Rows fed at each step.
    steps: Vec<usize>,
    /// Every `select` call: the rows kept and `same_sources`.
    selects: Vec<(Vec<u32>, bool)>,
}

impl Scripted {
    fn new(script: Script, sentences: usize) -> Self {
        Scripted {
            script,
            rows: (0..sentences).map(|s| (s, Vec::new())).collect(),
            steps: Vec::new(),
            selects: Vec::new(),
        }
    }
}

fn distribution(listed: &[(u32, f64)]) -> Vec<f64> {
    let mass: f64 = listed.iter().map(|&(_, p)| p).sum();
    let rest = (1.0 - mass) / (VOCAB - listed.len()) as f64;
    let mut p = vec![rest; VOCAB];
    for &(t, q) in listed {
        p[t as usize] = q;
    }
    p
}

impl StepDecoder for Scripted {
    fn step(&mut self, tokens: &[u32]) -> Result<(Vec<f32>, usize), GenerateError> {
        assert_eq!(tokens.len(), self.rows.len(), "one token per live row");
        let mut logits = Vec::with_capacity(tokens.len() * VOCAB);
        for ((sentence, fed), &t) in self.rows.iter_mut().zip(tokens) {
            fed.push(t);
            assert_eq!(
                fed[0], SPECIAL.start,
                "every row starts with the start token"
            );
            let p = distribution(&(self.script)(*sentence, &fed[1..]));
            logits.extend(p.iter().map(|p| p.ln() as f32));
        }
        self.steps.push(tokens.len());
        Ok((logits, VOCAB))
    }

    fn select(&mut self, rows: &[u32], same_sources: bool) -> Result<(), GenerateError> {
        self.rows = rows
            .iter()
            .map(|&r| self.rows[r as usize].clone())
            .collect();
        self.selects.push((rows.to_vec(), same_sources));
        Ok(())
    }
}

fn plain(beam: usize) -> GenerateConfig {
    GenerateConfig {
        beam,
        nbest: beam,
        forced_eos: false,
        ban_pad: false,
        renormalize: false,
        ..GenerateConfig::default()
    }
}

fn ln(p: f64) -> f64 {
    p.ln()
}

/// Checks tokens exactly and scores to 1e-5 (the logits are f32 logs).
fn assert_hyps(got: &[Hypothesis], want: &[(&[u32], f64)], what: &str) {
    let tokens: Vec<&[u32]> = got.iter().map(|h| h.tokens.as_slice()).collect();
    let want_tokens: Vec<&[u32]> = want.iter().map(|w| w.0).collect();
    assert_eq!(tokens, want_tokens, "{what}: tokens");
    for (h, &(_, s)) in got.iter().zip(want) {
        assert!(
            (h.score as f64 - s).abs() < 1e-5,
            "{what}: {:?} scored {} instead of {s}",
            h.tokens,
            h.score
        );
    }
}

fn unscripted(s: usize, prefix: &[u32]) -> ! {
    panic!("the search stepped sentence {s} after {prefix:?}, which the hand trace rules out")
}

// ---------------------------------------------------------------------------------------------
// Greedy search
// ---------------------------------------------------------------------------------------------

fn two_sentences(s: usize, prefix: &[u32]) -> Vec<(u32, f64)> {
    match (s, prefix) {
        (0, []) => vec![(A, 0.6), (EOS, 0.3), (B, 0.06), (C, 0.02)],
        (0, [A]) => vec![(EOS, 0.7), (B, 0.2), (C, 0.05), (D, 0.03)],
        (1, []) => vec![(B, 0.5), (A, 0.3), (EOS, 0.1), (C, 0.05)],
        (1, [B]) => vec![(C, 0.5), (EOS, 0.4), (A, 0.05), (D, 0.03)],
        (1, [B, C]) => vec![(EOS, 0.9), (A, 0.04), (B, 0.03), (D, 0.02)],
        _ => unscripted(s, prefix),
    }
}

#[test]
fn greedy_takes_the_arg_max_and_a_sentence_leaves_at_its_eos() {
    let mut dec = Scripted::new(two_sentences, 2);
    let out = search(&mut dec, &[10, 10], &plain(1), SPECIAL).unwrap();
    // Sentence 0: a (.6), then </s> (.7): (ln .6 + ln .7) / 2 = (-0.5108 - 0.3567) / 2 = -0.4338.
    assert_hyps(
        &out[0],
        &[(&[A, EOS], (ln(0.6) + ln(0.7)) / 2.0)],
        "sentence 0",
    );
    // Sentence 1: b (.5), c (.5), </s> (.9): (-0.6931 - 0.6931 - 0.1054) / 3 = -0.4972.
    assert_hyps(
        &out[1],
        &[(&[B, C, EOS], (ln(0.5) + ln(0.5) + ln(0.9)) / 3.0)],
        "sentence 1",
    );
    // Both rows step twice; after the second step sentence 0 is done and only row 1 is kept.
    assert_eq!(dec.steps, vec![2, 2, 1]);
    assert_eq!(dec.selects, vec![(vec![1], false)]);
}

fn always_a(_: usize, _: &[u32]) -> Vec<(u32, f64)> {
    vec![(A, 0.5), (B, 0.3), (EOS, 0.1), (C, 0.05)]
}

#[test]
fn greedy_stops_at_the_length_limit_and_forces_eos_there_when_asked() {
    // `a` always wins, so only the limit ends a sentence: 3 new tokens for sentence 0, 1 for
    // sentence 1.
    let mut dec = Scripted::new(always_a, 2);
    let out = search(&mut dec, &[3, 1], &plain(1), SPECIAL).unwrap();
    // 3 · ln .5 / 3 = ln .5 = -0.6931; one token: ln .5 / 1.
    assert_hyps(&out[0], &[(&[A, A, A], ln(0.5))], "limit 3");
    assert_hyps(&out[1], &[(&[A], ln(0.5))], "limit 1");
    assert_eq!(dec.selects, vec![(vec![0], false)]);

    // forced_eos: the last allowed token is </s> with log-probability 0:
    // (2 · ln .5 + 0) / 3 = -0.4621, and a single allowed token scores 0 / 1.
    let cfg = GenerateConfig {
        forced_eos: true,
        ..plain(1)
    };
    let out = search(&mut Scripted::new(always_a, 2), &[3, 1], &cfg, SPECIAL).unwrap();
    assert_hyps(&out[0], &[(&[A, A, EOS], 2.0 * ln(0.5) / 3.0)], "forced");
    assert_hyps(&out[1], &[(&[EOS], 0.0)], "forced at once");

    // Length penalty 2 divides by len²: -1.3863 / 9 = -0.1540.
    let cfg = GenerateConfig { lenpen: 2.0, ..cfg };
    let out = search(&mut Scripted::new(always_a, 1), &[3], &cfg, SPECIAL).unwrap();
    assert_hyps(&out[0], &[(&[A, A, EOS], 2.0 * ln(0.5) / 9.0)], "lenpen 2");
}

fn eos_first(_: usize, _: &[u32]) -> Vec<(u32, f64)> {
    vec![(EOS, 0.5), (A, 0.3), (B, 0.1), (C, 0.05)]
}

#[test]
fn greedy_bans_eos_before_min_new_tokens() {
    let out = search(&mut Scripted::new(eos_first, 1), &[10], &plain(1), SPECIAL).unwrap();
    assert_hyps(&out[0], &[(&[EOS], ln(0.5))], "no minimum");

    // Two tokens before </s> may come: a, a, then </s>. Without renormalisation the
    // log-probabilities are taken before the ban: (2 · ln .3 + ln .5) / 3 = -1.0337.
    let cfg = GenerateConfig {
        min_new_tokens: 2,
        ..plain(1)
    };
    let out = search(&mut Scripted::new(eos_first, 1), &[10], &cfg, SPECIAL).unwrap();
    assert_hyps(
        &out[0],
        &[(&[A, A, EOS], (2.0 * ln(0.3) + ln(0.5)) / 3.0)],
        "min 2",
    );

    // With renormalisation the ban leaves mass .5, so a has .3 / .5 = .6; the third step bans
    // nothing: (2 · ln .6 + ln .5) / 3 = -0.5716.
    let cfg = GenerateConfig {
        renormalize: true,
        ..cfg
    };
    let out = search(&mut Scripted::new(eos_first, 1), &[10], &cfg, SPECIAL).unwrap();
    assert_hyps(
        &out[0],
        &[(&[A, A, EOS], (2.0 * ln(0.6) + ln(0.5)) / 3.0)],
        "min 2, renormalised",
    );
}

// ---------------------------------------------------------------------------------------------
// Beam search (beam 2: 4 candidates per step, the best 2 of them may finish)
// ---------------------------------------------------------------------------------------------

// The script where the three `early_stopping` modes part ways (limit 4 new tokens).
//
// Step 0, one row: </s> -0.6931, a -0.9163, b -3.2189, c -3.5066. Of the best two, </s> finishes:
//   F0 = [</s>] scores -0.6931 / 1. Running: [a] -0.9163, [b] -3.2189.
// Step 1: a+c -1.7148, a+</s> -1.8326, a+d -3.2189, b+</s> -3.3242 (then a+b -4.8283).
//   a+</s> is among the best two: F1 = [a </s>] -1.8326 / 2 = -0.9163. Running: [a c] -1.7148,
//   [a d] -3.2189 (b+</s> finished outside the best two, so it is dropped).
//   Two hypotheses are finished:
//   - `true` stops here: F0, F1.
//   - `false`: the best running beam at its current length, -1.7148 / 2 = -0.8574, beats the
//     worst finished (-0.9163): go on.
//   - `"never"`: -1.7148 / 4 (the limit) = -0.4287 beats it too: go on.
// Step 2: ac+</s> -2.4079, ac+d -2.7646, ad+</s> -3.7297, ac+b -4.2405 (then ad+b -4.8283).
//   ac+</s> finishes: -2.4079 / 3 = -0.8026, which pushes F1 out: F0 -0.6931, [a c </s>] -0.8026.
//   Running: [a c d] -2.7646, [a c b] -4.2405.
//   - `false`: -2.7646 / 3 = -0.9215 cannot beat -0.8026: stop.
//   - `"never"`: -2.7646 / 4 = -0.6912 can: go on.
// Step 3 (the limit: every candidate finishes): acd+</s> -2.9878, acb+</s> -4.5972, acd+b -5.0672,
//   acd+c -5.9835. The best two finish: -2.9878 / 4 = -0.7469 pushes [a c </s>] out;
//   -4.5972 / 4 = -1.1493 does not get in. Result: F0 -0.6931, [a c d </s>] -0.7469.
fn three_modes(s: usize, prefix: &[u32]) -> Vec<(u32, f64)> {
    match prefix {
        [] => vec![(EOS, 0.5), (A, 0.4), (B, 0.04), (C, 0.03)],
        [A] => vec![(C, 0.45), (EOS, 0.4), (D, 0.1), (B, 0.02)],
        [B] => vec![(EOS, 0.9), (C, 0.04), (D, 0.03), (A, 0.02)],
        [A, C] => vec![(EOS, 0.5), (D, 0.35), (B, 0.08), (C, 0.04)],
        [A, D] => vec![(EOS, 0.6), (B, 0.2), (C, 0.1), (A, 0.05)],
        [A, C, D] => vec![(EOS, 0.8), (B, 0.1), (C, 0.04), (A, 0.03)],
        [A, C, B] => vec![(EOS, 0.7), (D, 0.15), (C, 0.08), (A, 0.04)],
        _ => unscripted(s, prefix),
    }
}

fn early_stopping(mode: EarlyStopping) -> GenerateConfig {
    GenerateConfig {
        early_stopping: mode,
        ..plain(2)
    }
}

#[test]
fn early_stopping_true_stops_once_beam_hypotheses_are_finished() {
    let mut dec = Scripted::new(three_modes, 1);
    let out = search(
        &mut dec,
        &[4],
        &early_stopping(EarlyStopping::Eager),
        SPECIAL,
    )
    .unwrap();
    assert_hyps(
        &out[0],
        &[(&[EOS], ln(0.5)), (&[A, EOS], (ln(0.4) + ln(0.4)) / 2.0)],
        "early_stopping = true",
    );
    // Step 0's single row becomes the two beams [a] and [b]; step 1 ends the search.
    assert_eq!(dec.steps, vec![1, 2]);
    assert_eq!(dec.selects, vec![(vec![0, 0], false)]);
}

#[test]
fn early_stopping_false_stops_when_no_running_beam_can_win_at_its_length() {
    let mut dec = Scripted::new(three_modes, 1);
    let cfg = early_stopping(EarlyStopping::Heuristic);
    let out = search(&mut dec, &[4], &cfg, SPECIAL).unwrap();
    assert_hyps(
        &out[0],
        &[
            (&[EOS], ln(0.5)),
            (&[A, C, EOS], (ln(0.4) + ln(0.45) + ln(0.5)) / 3.0),
        ],
        "early_stopping = false",
    );
    // After step 1 both beams ([a c], [a d]) extend row 0, and no sentence left: same sources.
    assert_eq!(dec.steps, vec![1, 2, 2]);
    assert_eq!(dec.selects, vec![(vec![0, 0], false), (vec![0, 0], true)]);
}

#[test]
fn early_stopping_never_assumes_the_length_limit() {
    let mut dec = Scripted::new(three_modes, 1);
    let cfg = early_stopping(EarlyStopping::Never);
    let out = search(&mut dec, &[4], &cfg, SPECIAL).unwrap();
    assert_hyps(
        &out[0],
        &[
            (&[EOS], ln(0.5)),
            (
                &[A, C, D, EOS],
                (ln(0.4) + ln(0.45) + ln(0.35) + ln(0.8)) / 4.0,
            ),
        ],
        "early_stopping = never",
    );
    assert_eq!(dec.steps, vec![1, 2, 2, 2]);
    assert_eq!(
        dec.selects,
        vec![(vec![0, 0], false), (vec![0, 0], true), (vec![0, 0], true)]
    );
}

// A short and a long hypothesis whose order depends on the length penalty (limit 5).
//
// Step 0: a -0.6931, </s> -0.7985, b -3.9120, c -4.1997. </s> is in the best two:
//   F0 = [</s>] -0.7985 (length 1, so the same for every penalty). Running: [a], [b].
// Step 1: a+b -0.9163, a+c -3.5066, a+</s> -3.6889, a+d -3.9120 (then b+c -4.8283). The best two
//   do not finish. Running: [a b] -0.9163, [a c] -3.5066.
// Step 2: ab+</s> -1.0217, ab+c -4.1352, ac+d -4.1997, ab+d -4.4228. ab+</s> finishes:
//   - penalty 1: -1.0217 / 3 = -0.3406 beats F0; the best running beam, -4.1352 / 3 = -1.3784,
//     cannot beat F0: stop with [a b </s>] -0.3406, [</s>] -0.7985.
//   - penalty 0: -1.0217 / 1 loses to F0; -4.1352 cannot beat -1.0217: stop with
//     [</s>] -0.7985, [a b </s>] -1.0217.
fn short_or_long(s: usize, prefix: &[u32]) -> Vec<(u32, f64)> {
    match prefix {
        [] => vec![(A, 0.5), (EOS, 0.45), (B, 0.02), (C, 0.015)],
        [A] => vec![(B, 0.8), (C, 0.06), (EOS, 0.05), (D, 0.04)],
        [B] => vec![(C, 0.4), (EOS, 0.3), (D, 0.2), (A, 0.05)],
        [A, B] => vec![(EOS, 0.9), (C, 0.04), (D, 0.03), (A, 0.02)],
        [A, C] => vec![(D, 0.5), (B, 0.3), (EOS, 0.1), (C, 0.05)],
        _ => unscripted(s, prefix),
    }
}

#[test]
fn the_length_penalty_decides_between_a_short_and_a_long_hypothesis() {
    let long_sum = ln(0.5) + ln(0.8) + ln(0.9); // -1.0217
    let short = ln(0.45); // -0.7985
    let out = search(
        &mut Scripted::new(short_or_long, 1),
        &[5],
        &plain(2),
        SPECIAL,
    )
    .unwrap();
    assert_hyps(
        &out[0],
        &[(&[A, B, EOS], long_sum / 3.0), (&[EOS], short)],
        "length penalty 1",
    );
    let cfg = GenerateConfig {
        lenpen: 0.0,
        ..plain(2)
    };
    let out = search(&mut Scripted::new(short_or_long, 1), &[5], &cfg, SPECIAL).unwrap();
    assert_hyps(
        &out[0],
        &[(&[EOS], short), (&[A, B, EOS], long_sum)],
        "length penalty 0",
    );
    // num_return_sequences = 1 keeps only the best of the same search.
    for (lenpen, best) in [(1.0, &[A, B, EOS][..]), (0.0, &[EOS][..])] {
        let cfg = GenerateConfig {
            lenpen,
            nbest: 1,
            ..plain(2)
        };
        let out = search(&mut Scripted::new(short_or_long, 1), &[5], &cfg, SPECIAL).unwrap();
        assert_eq!(out[0].len(), 1, "nbest 1, penalty {lenpen}");
        assert_eq!(out[0][0].tokens, best, "nbest 1, penalty {lenpen}");
    }
}

/// Sentence 0 runs [`three_modes`]; sentence 1 runs [`short_or_long`] with a limit of 2 tokens.
fn batch(s: usize, prefix: &[u32]) -> Vec<(u32, f64)> {
    match s {
        0 => three_modes(s, prefix),
        _ => short_or_long(s, prefix),
    }
}

#[test]
fn beam_hypotheses_are_ranked_by_score_and_finished_sentences_leave_the_batch() {
    let mut dec = Scripted::new(batch, 2);
    let out = search(&mut dec, &[4, 2], &plain(2), SPECIAL).unwrap();
    // Sentence 0 as in `early_stopping_false_...`: the hypothesis finished first ranks first.
    assert_hyps(
        &out[0],
        &[
            (&[EOS], ln(0.5)),
            (&[A, C, EOS], (ln(0.4) + ln(0.45) + ln(0.5)) / 3.0),
        ],
        "sentence 0",
    );
    // Sentence 1 reaches its limit at step 1, where every candidate finishes: of the best two,
    // a+b -0.9163 / 2 = -0.4581 ranks above F0 = [</s>] -0.7985 (finished a step earlier) and
    // a+c -3.5066 / 2 = -1.7533 does not get in. [a b] has no </s>: the limit cut it.
    assert_hyps(
        &out[1],
        &[(&[A, B], (ln(0.5) + ln(0.8)) / 2.0), (&[EOS], ln(0.45))],
        "sentence 1",
    );
    // Step 0: one row per sentence, expanded to two beams each (rows 0, 0 and 1, 1). Step 1:
    // sentence 1 is done, sentence 0's beams both extend its row 0.
    assert_eq!(dec.steps, vec![2, 4, 2]);
    assert_eq!(
        dec.selects,
        vec![(vec![0, 0, 1, 1], false), (vec![0, 0], false)]
    );
}

#[test]
fn inconsistent_settings_are_errors() {
    let cfg = GenerateConfig {
        nbest: 3,
        ..plain(2)
    };
    let err = search(&mut Scripted::new(eos_first, 1), &[4], &cfg, SPECIAL).unwrap_err();
    assert!(matches!(err, GenerateError::Config(_)), "{err}");
    let err = search(&mut Scripted::new(eos_first, 1), &[0], &plain(1), SPECIAL).unwrap_err();
    assert!(matches!(err, GenerateError::Config(_)), "{err}");
}
