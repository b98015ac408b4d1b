//! Parallel corpora: reading (text pairs, TSV, JSONL), filtering with counted skips, token-count
//! batching with length bucketing, and a seeded, resumable epoch order.

use crate::error::{Error, Result};
use crate::recipe::{DataFormat, DataSection, SplitSection};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rdrop_text::LineRules;
use std::fmt;
use std::path::{Path, PathBuf};

/// One sentence pair as read, with the 1-based line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPair {
    /// Source-language sentence.
    pub source: String,
    /// Target-language sentence.
    pub target: String,
    /// 1-based line in the file it was read from (for error messages).
    pub line: usize,
}

/// A tokenised pair (`</s>` included on both sides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Source token ids.
    pub source: Vec<u32>,
    /// Target token ids: the labels; the decoder input is them shifted right after the start token.
    pub target: Vec<u32>,
}

/// What happened to every line of a split: nothing is dropped without being counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Lines (pairs) read.
    pub read: usize,
    /// Pairs with an empty (or whitespace-only) side, skipped.
    pub empty: usize,
    /// Pairs longer than `data.max_len` tokens on either side, skipped.
    pub too_long: usize,
    /// Pairs whose token-length ratio exceeds `data.max_len_ratio`, skipped.
    pub bad_ratio: usize,
    /// Pairs beyond `max_sentences`, not used.
    pub beyond_limit: usize,
    /// Pairs that alone exceed `batching.max_tokens` (with `batching.oversize = "skip"`).
    pub over_max_tokens: usize,
    /// Pairs kept.
    pub kept: usize,
}

impl fmt::Display for DataStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pairs read, {} kept; skipped: {} empty, {} too long, {} bad length ratio, {} beyond max_sentences",
            self.read, self.kept, self.empty, self.too_long, self.bad_ratio, self.beyond_limit
        )?;
        if self.over_max_tokens > 0 {
            write!(
                f,
                ", {} longer than batching.max_tokens",
                self.over_max_tokens
            )?;
        }
        Ok(())
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A corpus file as lines, read as every rdrop command reads text ([`LineRules::Plain`]: LF or
/// CRLF, a leading byte-order mark dropped); invalid UTF-8 names the file, line and column.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = read_bytes(path)?;
    let name = path.display().to_string();
    Ok(rdrop_text::split_lines(&bytes, &name, LineRules::Plain)?)
}

/// Reads one split as configured in the data section; `split` ("train"/"valid") names it in errors.
/// Pairs with an empty side are skipped and counted in the returned stats.
pub fn read_split(
    spec: &SplitSection,
    data: &DataSection,
    split: &str,
) -> Result<(Vec<RawPair>, DataStats)> {
    let need = |p: &Option<PathBuf>, key: &str| -> Result<PathBuf> {
        p.clone().ok_or_else(|| Error::DataSpec {
            split: split.to_string(),
            message: format!("{key} is not set (format = {:?})", data.format),
        })
    };
    let pairs: Vec<(String, String, usize)> = match data.format {
        DataFormat::Text => {
            let (sp, tp) = (need(&spec.source, "source")?, need(&spec.target, "target")?);
            let (s, t) = (read_lines(&sp)?, read_lines(&tp)?);
            if s.len() != t.len() {
                return Err(Error::Misaligned {
                    source_path: sp,
                    source_lines: s.len(),
                    target_path: tp,
                    target_lines: t.len(),
                });
            }
            s.into_iter()
                .zip(t)
                .enumerate()
                .map(|(i, (a, b))| (a, b, i + 1))
                .collect()
        }
        DataFormat::Tsv => {
            let path = need(&spec.file, "file")?;
            let (sc, tc) = (data.source_column, data.target_column);
            let mut out = Vec::new();
            for (i, line) in read_lines(&path)?.into_iter().enumerate() {
                // A blank line (often the last one) is an empty pair, counted, as in text and JSONL.
                if line.trim().is_empty() {
                    out.push((String::new(), String::new(), i + 1));
                    continue;
                }
                let cols: Vec<&str> = line.split('\t').collect();
                let get = |c: usize| {
                    cols.get(c)
                        .map(|s| s.to_string())
                        .ok_or_else(|| Error::BadLine {
                            path: path.clone(),
                            line: i + 1,
                            message: format!(
                                "{} tab-separated column(s), need column {} (0-based)",
                                cols.len(),
                                sc.max(tc)
                            ),
                        })
                };
                out.push((get(sc)?, get(tc)?, i + 1));
            }
            out
        }
        DataFormat::Jsonl => {
            let path = need(&spec.file, "file")?;
            let sf = if data.source_field.is_empty() {
                &data.source_lang
            } else {
                &data.source_field
            };
            let tf = if data.target_field.is_empty() {
                &data.target_lang
            } else {
                &data.target_field
            };
            let mut out = Vec::new();
            for (i, line) in read_lines(&path)?.into_iter().enumerate() {
                let bad = |message: String| Error::BadLine {
                    path: path.clone(),
                    line: i + 1,
                    message,
                };
                if line.trim().is_empty() {
                    out.push((String::new(), String::new(), i + 1));
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
                let field = |f: &str| -> Result<String> {
                    match v.get(f) {
                        Some(serde_json::Value::String(s)) => Ok(s.clone()),
                        Some(other) => Err(bad(format!("field {f:?} is not a string: {other}"))),
                        None => Err(bad(format!("no field {f:?}"))),
                    }
                };
                out.push((field(sf)?, field(tf)?, i + 1));
            }
            out
        }
    };
    let mut stats = DataStats {
        read: pairs.len(),
        ..Default::default()
    };
    let mut kept = Vec::with_capacity(pairs.len());
    for (s, t, line) in pairs {
        let (s, t) = (s.trim(), t.trim());
        if s.is_empty() || t.is_empty() {
            stats.empty += 1;
            continue;
        }
        kept.push(RawPair {
            source: s.to_string(),
            target: t.to_string(),
            line,
        });
    }
    stats.kept = kept.len();
    Ok((kept, stats))
}

/// Tokenises pairs and applies the length and ratio filters (counted in `stats`); `limit` > 0
/// keeps only the first `limit` usable pairs.
pub fn tokenize_and_filter<E>(
    pairs: &[RawPair],
    stats: &mut DataStats,
    max_len: usize,
    max_ratio: f64,
    limit: usize,
    encode: E,
) -> Result<Vec<Example>>
where
    E: FnMut(&str, &str) -> Result<(Vec<u32>, Vec<u32>)>,
{
    Ok(tokenize_and_filter_kept(pairs, stats, max_len, max_ratio, limit, encode)?.0)
}

/// [`tokenize_and_filter`], also returning the index in `pairs` of each kept example (validation
/// scores against the kept pairs' references).
pub fn tokenize_and_filter_kept<E>(
    pairs: &[RawPair],
    stats: &mut DataStats,
    max_len: usize,
    max_ratio: f64,
    limit: usize,
    mut encode: E,
) -> Result<(Vec<Example>, Vec<usize>)>
where
    E: FnMut(&str, &str) -> Result<(Vec<u32>, Vec<u32>)>,
{
    let mut out = Vec::with_capacity(pairs.len());
    let mut kept = Vec::with_capacity(pairs.len());
    for (i, p) in pairs.iter().enumerate() {
        if limit > 0 && out.len() >= limit {
            stats.beyond_limit += 1;
            continue;
        }
        let (s, t) = encode(&p.source, &p.target)?;
        if s.len() > max_len || t.len() > max_len {
            stats.too_long += 1;
            continue;
        }
        let (a, b) = (s.len().max(1) as f64, t.len().max(1) as f64);
        if a.max(b) / a.min(b) > max_ratio {
            stats.bad_ratio += 1;
            continue;
        }
        out.push(Example {
            source: s,
            target: t,
        });
        kept.push(i);
    }
    stats.kept = out.len();
    Ok((out, kept))
}

/// Padded cost of a batch: rows × the longest side.
fn cost(rows: usize, longest: usize) -> usize {
    rows * longest
}

/// The batches of one epoch as lists of example indices. Examples are shuffled with a ChaCha
/// generator seeded by (seed, epoch), stably sorted by length so each batch holds similar lengths
/// (little padding), cut at `max_tokens` padded tokens, and the batch order shuffled again. The
/// plan depends only on (examples, max_tokens, seed, epoch), so a position inside it is all that
/// resuming needs.
pub fn epoch_batches(
    examples: &[Example],
    max_tokens: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_da7a);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(&mut rng);
    let len = |i: usize| examples[i].source.len().max(examples[i].target.len());
    order.sort_by_key(|&i| (examples[i].target.len(), examples[i].source.len()));
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let l = len(i);
        if !cur.is_empty() && cost(cur.len() + 1, longest.max(l)) > max_tokens {
            batches.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(l);
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches.shuffle(&mut rng);
    batches
}

/// Tensors for one batch (right-padded with the pad id).
#[derive(Debug, Clone)]
pub struct Batch {
    /// [B, S] u32 source ids.
    pub src_ids: Tensor,
    /// [B, S] u8, 1 = token, 0 = pad.
    pub src_mask: Tensor,
    /// [B, T] u32 decoder inputs: decoder start + target without its last token.
    pub tgt_in: Tensor,
    /// [B, T] u32 gold targets, pad where there is no token.
    pub labels: Tensor,
    /// Rows.
    pub rows: usize,
    /// Non-pad source tokens.
    pub src_tokens: usize,
    /// Non-pad target tokens (the normaliser of the loss).
    pub tgt_tokens: usize,
}

/// Builds the tensors of a batch from example indices.
pub fn make_batch(
    examples: &[Example],
    idx: &[usize],
    pad: u32,
    decoder_start: u32,
    device: &Device,
) -> Result<Batch> {
    let b = idx.len();
    let s = idx
        .iter()
        .map(|&i| examples[i].source.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let t = idx
        .iter()
        .map(|&i| examples[i].target.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut src = vec![pad; b * s];
    let mut mask = vec![0u8; b * s];
    let mut tin = vec![pad; b * t];
    let mut lab = vec![pad; b * t];
    let (mut ns, mut nt) = (0, 0);
    for (r, &i) in idx.iter().enumerate() {
        let e = &examples[i];
        for (j, &tok) in e.source.iter().enumerate() {
            src[r * s + j] = tok;
            mask[r * s + j] = 1;
        }
        for (j, &tok) in e.target.iter().enumerate() {
            lab[r * t + j] = tok;
            tin[r * t + j] = if j == 0 {
                decoder_start
            } else {
                e.target[j - 1]
            };
        }
        ns += e.source.len();
        nt += e.target.len();
    }
    Ok(Batch {
        src_ids: Tensor::from_vec(src, (b, s), device)?,
        src_mask: Tensor::from_vec(mask, (b, s), device)?,
        tgt_in: Tensor::from_vec(tin, (b, t), device)?,
        labels: Tensor::from_vec(lab, (b, t), device)?,
        rows: b,
        src_tokens: ns,
        tgt_tokens: nt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn text_spec(dir: &Path, src: &[u8], tgt: &[u8]) -> (SplitSection, DataSection) {
        let spec = SplitSection {
            source: Some(write(dir, "s.de", src)),
            target: Some(write(dir, "t.en", tgt)),
            file: None,
        };
        (spec, Recipe::default().data)
    }

    #[test]
    fn misaligned_files_name_both_and_counts() {
        let d = tempfile::tempdir().unwrap();
        let (spec, data) = text_spec(d.path(), b"a\nb\nc\n", b"x\ny\n");
        let msg = read_split(&spec, &data, "train").unwrap_err().to_string();
        assert!(
            msg.contains("s.de has 3 lines") && msg.contains("t.en has 2"),
            "{msg}"
        );
    }

    #[test]
    fn invalid_utf8_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let (spec, data) = text_spec(d.path(), b"gut\nschl\xffecht\n", b"good\nbad\n");
        let msg = read_split(&spec, &data, "train").unwrap_err().to_string();
        assert!(msg.contains("s.de:2: invalid UTF-8"), "{msg}");
    }

    #[test]
    fn unreadable_file_is_named() {
        let spec = SplitSection {
            source: Some("/nonexistent/a.de".into()),
            target: Some("b".into()),
            file: None,
        };
        let msg = read_split(&spec, &Recipe::default().data, "train")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/a.de"), "{msg}");
    }

    #[test]
    fn empty_pairs_are_counted_and_crlf_and_bom_stripped() {
        let d = tempfile::tempdir().unwrap();
        let (spec, data) = text_spec(d.path(), "\u{feff}a\r\n\nc\n  \n".as_bytes(), b"x\ny\n\nw");
        let (pairs, stats) = read_split(&spec, &data, "train").unwrap();
        assert_eq!(stats.read, 4);
        assert_eq!(stats.empty, 3);
        assert_eq!(
            pairs,
            vec![RawPair {
                source: "a".into(),
                target: "x".into(),
                line: 1
            }]
        );
        assert!(stats.to_string().contains("3 empty"));
    }

    #[test]
    fn tsv_and_jsonl() {
        let d = tempfile::tempdir().unwrap();
        let mut data = Recipe::default().data;
        data.format = DataFormat::Tsv;
        let spec = SplitSection {
            file: Some(write(d.path(), "c.tsv", b"ein\tone\nzwei\ttwo\n")),
            ..Default::default()
        };
        let (pairs, _) = read_split(&spec, &data, "train").unwrap();
        assert_eq!(pairs[1].source, "zwei");
        assert_eq!(pairs[1].target, "two");
        let spec = SplitSection {
            file: Some(write(d.path(), "bad.tsv", b"ein\tone\nzwei\n")),
            ..Default::default()
        };
        let msg = read_split(&spec, &data, "train").unwrap_err().to_string();
        assert!(msg.contains("bad.tsv:2") && msg.contains("column"), "{msg}");

        data.format = DataFormat::Jsonl;
        let spec = SplitSection {
            file: Some(write(
                d.path(),
                "c.jsonl",
                b"{\"de\":\"ein\",\"en\":\"one\"}\n{\"de\":\"zwei\"}\n",
            )),
            ..Default::default()
        };
        let msg = read_split(&spec, &data, "valid").unwrap_err().to_string();
        assert!(msg.contains("c.jsonl:2") && msg.contains("\"en\""), "{msg}");
        let spec = SplitSection {
            file: Some(write(d.path(), "j.jsonl", b"{\"de\": 1}\nnot json\n")),
            ..Default::default()
        };
        let msg = read_split(&spec, &data, "valid").unwrap_err().to_string();
        assert!(msg.contains("j.jsonl:1"), "{msg}");
    }

    #[test]
    fn filters_count_long_and_ratio() {
        let pairs: Vec<RawPair> = [
            ("a b", "x y"),
            ("a b c d e f", "x"),
            ("a", "x y z w v u t s"),
            ("a", "x"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (s, t))| RawPair {
            source: s.to_string(),
            target: t.to_string(),
            line: i + 1,
        })
        .collect();
        let mut stats = DataStats {
            read: 4,
            kept: 4,
            ..Default::default()
        };
        let enc =
            |s: &str, t: &str| Ok((vec![1; s.split(' ').count()], vec![1; t.split(' ').count()]));
        let ex = tokenize_and_filter(&pairs, &mut stats, 7, 3.0, 0, enc).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!((stats.too_long, stats.bad_ratio, stats.kept), (1, 1, 2));
        let mut stats = DataStats::default();
        let ex = tokenize_and_filter(&pairs, &mut stats, 100, 100.0, 3, enc).unwrap();
        assert_eq!((ex.len(), stats.beyond_limit), (3, 1));
    }

    #[test]
    fn batches_cover_everything_once_respect_budget_and_are_seeded() {
        let examples: Vec<Example> = (0..200)
            .map(|i| Example {
                source: vec![1; 2 + i % 17],
                target: vec![1; 3 + (i * 7) % 13],
            })
            .collect();
        let b = epoch_batches(&examples, 64, 7, 0);
        let mut all: Vec<usize> = b.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        for batch in &b {
            let longest = batch
                .iter()
                .map(|&i| examples[i].source.len().max(examples[i].target.len()))
                .max()
                .unwrap();
            assert!(batch.len() == 1 || batch.len() * longest <= 64);
        }
        assert_eq!(b, epoch_batches(&examples, 64, 7, 0));
        assert_ne!(b, epoch_batches(&examples, 64, 7, 1));
        assert_ne!(b, epoch_batches(&examples, 64, 8, 0));
    }

    #[test]
    fn batch_tensors_shift_targets_and_pad() {
        let ex = vec![
            Example {
                source: vec![5, 6, 0],
                target: vec![7, 0],
            },
            Example {
                source: vec![8, 0],
                target: vec![9, 10, 0],
            },
        ];
        let b = make_batch(&ex, &[0, 1], 99, 99, &Device::Cpu).unwrap();
        assert_eq!(
            b.src_ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 0], vec![8, 0, 99]]
        );
        assert_eq!(
            b.src_mask.to_vec2::<u8>().unwrap(),
            vec![vec![1, 1, 1], vec![1, 1, 0]]
        );
        assert_eq!(
            b.tgt_in.to_vec2::<u32>().unwrap(),
            vec![vec![99, 7, 99], vec![99, 9, 10]]
        );
        assert_eq!(
            b.labels.to_vec2::<u32>().unwrap(),
            vec![vec![7, 0, 99], vec![9, 10, 0]]
        );
        assert_eq!((b.rows, b.src_tokens, b.tgt_tokens), (2, 5, 5));
    }
}
