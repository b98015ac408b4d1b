//! The tokenizer against transformers' MarianTokenizer (fixtures written by
//! scripts/make_tokenizer_fixtures.py), its error reporting, and training + saving joint tokenizers.

use std::path::{Path, PathBuf};

use rdrop_seq2seq::tokenizer::{train_joint, MarianTokenizer, TokenizerError, TokenizerKind};
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    encode: Vec<EncodeCase>,
    decode: Vec<DecodeCase>,
}

#[derive(Deserialize)]
struct EncodeCase {
    text: String,
    source: Vec<u32>,
    target: Vec<u32>,
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    text: String,
}

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizers")
}

fn fixture_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cases.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// A loadable copy of a fixture: joint fixtures store target.spm only once (as source.spm).
fn materialise(fixture: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    if !tmp.path().join("target.spm").exists() {
        std::fs::copy(tmp.path().join("source.spm"), tmp.path().join("target.spm")).unwrap();
    }
    tmp
}

fn load_fixture(name: &str) -> (tempfile::TempDir, MarianTokenizer) {
    let dir = materialise(&fixtures_root().join(name));
    let tok = MarianTokenizer::from_dir(dir.path()).unwrap();
    (dir, tok)
}

/// Compares every case of one fixture; returns the mismatches (at most a few described).
fn check_fixture(fixture: &Path) -> (usize, usize, Vec<String>) {
    let dir = materialise(fixture);
    let tok = MarianTokenizer::from_dir(dir.path())
        .unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
    let cases: Cases =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("cases.json")).unwrap())
            .unwrap();
    let name = fixture.file_name().unwrap().to_string_lossy().to_string();
    let mut bad = Vec::new();
    let mut n = 0;
    for c in &cases.encode {
        n += 2;
        let src = tok.encode_source(&c.text).unwrap();
        if src != c.source {
            bad.push(format!(
                "{name} source {:?}: got {src:?}, want {:?}",
                c.text, c.source
            ));
        }
        let tgt = tok.encode_target(&c.text).unwrap();
        if tgt != c.target {
            bad.push(format!(
                "{name} target {:?}: got {tgt:?}, want {:?}",
                c.text, c.target
            ));
        }
    }
    for c in &cases.decode {
        n += 1;
        match tok.decode(&c.ids) {
            Ok(text) if text == c.text => {}
            other => bad.push(format!(
                "{name} decode {:?}: got {other:?}, want {:?}",
                c.ids, c.text
            )),
        }
    }
    // The parallel batch path must agree with the one-by-one path.
    let texts: Vec<&str> = cases.encode.iter().map(|c| c.text.as_str()).collect();
    let batch = tok.encode_source_batch(&texts).unwrap();
    for (c, ids) in cases.encode.iter().zip(&batch) {
        if *ids != c.source {
            bad.push(format!("{name} batch source {:?}: got {ids:?}", c.text));
        }
    }
    let batch = tok.encode_target_batch(&texts).unwrap();
    for (c, ids) in cases.encode.iter().zip(&batch) {
        if *ids != c.target {
            bad.push(format!("{name} batch target {:?}: got {ids:?}", c.text));
        }
    }
    (n, cases.encode.len(), bad)
}

#[test]
fn ids_and_decoding_match_transformers_marian_tokenizer() {
    let mut roots = vec![fixtures_root()];
    // Larger, uncommitted case sets (`make_tokenizer_fixtures.py --corpus-cases N`).
    if let Ok(extra) = std::env::var("RDROP_TOKENIZER_EXTRA_FIXTURES") {
        roots.extend(std::env::split_paths(&extra));
    }
    let mut total = 0;
    let mut bad = Vec::new();
    for root in roots {
        let dirs = fixture_dirs(&root);
        assert!(!dirs.is_empty(), "no fixtures under {}", root.display());
        for dir in dirs {
            let (n, _, b) = check_fixture(&dir);
            total += n;
            bad.extend(b);
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {total} cases differ from transformers:\n{}",
        bad.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn special_ids_follow_vocab_json() {
    // make_tiny_marian.py layout: </s>=0, <unk>=1, <pad> last.
    let (_d, tok) = load_fixture("synth_joint");
    assert_eq!((tok.eos_id(), tok.unk_id()), (0, 1));
    assert_eq!(tok.pad_id() as usize, tok.vocab_size() - 1);
    assert!(!tok.separate_vocabs());
    let (_d, tok) = load_fixture("m30k_sep_vocab");
    assert!(tok.separate_vocabs());
    assert_ne!(tok.target_vocab_size(), 0);
}

#[test]
fn saved_spm_tokenizer_reloads_identically() {
    let (_d, tok) = load_fixture("m30k_sep_spm");
    let out = tempfile::tempdir().unwrap();
    tok.save(out.path()).unwrap();
    for f in [
        "source.spm",
        "target.spm",
        "vocab.json",
        "tokenizer_config.json",
    ] {
        assert!(out.path().join(f).is_file(), "{f} not written");
    }
    let again = MarianTokenizer::from_dir(out.path()).unwrap();
    for text in [
        "A dog runs through the grass.",
        "Ein Hund läuft über die Wiese.",
        " ☃ x  y ",
    ] {
        assert_eq!(
            tok.encode_source(text).unwrap(),
            again.encode_source(text).unwrap()
        );
        assert_eq!(
            tok.encode_target(text).unwrap(),
            again.encode_target(text).unwrap()
        );
    }
    assert_eq!(tok.vocab_size(), again.vocab_size());
}

fn expect_err_naming(
    result: Result<MarianTokenizer, TokenizerError>,
    file: &str,
) -> TokenizerError {
    match result {
        Ok(_) => panic!("expected an error naming {file}"),
        Err(e) => {
            assert!(
                e.to_string().contains(file),
                "error {e:?} does not name {file}"
            );
            e
        }
    }
}

#[test]
fn missing_vocab_json_is_an_error_naming_it() {
    let dir = materialise(&fixtures_root().join("synth_joint"));
    std::fs::remove_file(dir.path().join("vocab.json")).unwrap();
    let e = expect_err_naming(MarianTokenizer::from_dir(dir.path()), "vocab.json");
    assert!(matches!(e, TokenizerError::Io { .. }));
}

#[test]
fn missing_target_vocab_json_is_an_error_naming_it() {
    let dir = materialise(&fixtures_root().join("m30k_sep_vocab"));
    std::fs::remove_file(dir.path().join("target_vocab.json")).unwrap();
    expect_err_naming(MarianTokenizer::from_dir(dir.path()), "target_vocab.json");
}

#[test]
fn corrupt_spm_is_an_error_naming_it() {
    let dir = materialise(&fixtures_root().join("synth_joint"));
    std::fs::write(dir.path().join("source.spm"), b"this is not a protobuf").unwrap();
    let e = expect_err_naming(MarianTokenizer::from_dir(dir.path()), "source.spm");
    assert!(matches!(e, TokenizerError::Spm { .. }), "{e:?}");

    // A truncated model and a model whose character map is cut short.
    let good = std::fs::read(fixtures_root().join("m30k_joint/source.spm")).unwrap();
    for len in [good.len() / 2, good.len() - 3, 7] {
        std::fs::write(dir.path().join("target.spm"), &good[..len]).unwrap();
        std::fs::write(dir.path().join("source.spm"), &good).unwrap();
        expect_err_naming(MarianTokenizer::from_dir(dir.path()), "target.spm");
    }
}

#[test]
fn bad_json_is_an_error_naming_the_file() {
    let dir = materialise(&fixtures_root().join("synth_joint"));
    std::fs::write(dir.path().join("vocab.json"), b"{\"</s>\": 0, \"<unk>\": ").unwrap();
    expect_err_naming(MarianTokenizer::from_dir(dir.path()), "vocab.json");
    std::fs::write(
        dir.path().join("vocab.json"),
        b"{\"</s>\": 0, \"<pad>\": 1}",
    )
    .unwrap();
    let e = expect_err_naming(MarianTokenizer::from_dir(dir.path()), "vocab.json");
    assert!(matches!(e, TokenizerError::MissingToken { .. }), "{e:?}");
    std::fs::write(
        dir.path().join("vocab.json"),
        b"{\"</s>\": 0, \"<unk>\": \"one\"}",
    )
    .unwrap();
    expect_err_naming(MarianTokenizer::from_dir(dir.path()), "vocab.json");
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        b"{\"separate_vocabs\": \"yes\"}",
    )
    .unwrap();
    let e = expect_err_naming(
        MarianTokenizer::from_dir(dir.path()),
        "tokenizer_config.json",
    );
    assert!(e.to_string().contains("separate_vocabs"), "{e}");
}

#[test]
fn empty_directory_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let e = MarianTokenizer::from_dir(dir.path()).expect_err("an error");
    assert!(matches!(e, TokenizerError::NotFound { .. }), "{e:?}");
}

#[test]
fn decoding_an_id_outside_every_vocabulary_is_an_error() {
    let (_d, tok) = load_fixture("synth_joint");
    let e = tok.decode(&[5, 1_000_000]).expect_err("an error");
    assert!(
        matches!(e, TokenizerError::IdOutOfRange { id: 1_000_000, .. }),
        "{e:?}"
    );
}

fn training_text(dir: &Path) -> PathBuf {
    // Deterministic sentences from a small word list (a linear congruential generator picks words).
    let words = [
        "the", "a", "dog", "cat", "runs", "sits", "on", "grass", "red", "ball", "man", "woman",
        "plays", "with", "children", "street", "water", "jumps", "over", "fence", "blue", "shirt",
        "der", "die", "das", "Hund", "läuft", "über", "Wiese", "Straße", "spielt", "mit",
        "Kindern",
    ];
    let mut state: u64 = 42;
    let mut text = String::new();
    for _ in 0..400 {
        let n = 4 + (state % 8) as usize;
        let mut line = Vec::new();
        for _ in 0..n {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            line.push(words[(state >> 33) as usize % words.len()]);
        }
        text.push_str(&line.join(" "));
        text.push_str(".\n");
    }
    let path = dir.join("train.txt");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn train_joint_save_and_reload_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let file = training_text(tmp.path());
    for kind in [TokenizerKind::Bpe, TokenizerKind::Unigram] {
        let tok = train_joint(std::slice::from_ref(&file), kind, 120).unwrap();
        assert_eq!(
            (tok.eos_id(), tok.unk_id(), tok.pad_id()),
            (0, 1, 2),
            "{kind:?}"
        );
        assert!(
            tok.vocab_size() <= 200 && tok.vocab_size() > 40,
            "{kind:?}: {}",
            tok.vocab_size()
        );

        let text = "the dog läuft über die Wiese.";
        let ids = tok.encode_source(text).unwrap();
        assert_eq!(ids.last(), Some(&0));
        assert!(
            !ids[..ids.len() - 1].contains(&tok.unk_id()),
            "{kind:?}: {ids:?}"
        );
        assert_eq!(tok.decode(&ids).unwrap(), text, "{kind:?}");
        // Whitespace is normalised; unseen characters become <unk> and vanish when decoding.
        assert_eq!(
            tok.decode(&tok.encode_target("  the   red\tball  ").unwrap())
                .unwrap(),
            "the red ball"
        );
        assert!(tok.encode_source("☃").unwrap().contains(&tok.unk_id()));
        // Special tokens written in the text are the special ids, not pieces.
        assert_eq!(
            tok.encode_source("a</s>")
                .unwrap()
                .iter()
                .filter(|&&i| i == 0)
                .count(),
            2
        );

        let out = tmp.path().join(format!("{kind:?}"));
        tok.save(&out).unwrap();
        assert!(out.join("tokenizer.json").is_file());
        let again = MarianTokenizer::from_dir(&out).unwrap();
        assert_eq!(again.vocab_size(), tok.vocab_size());
        assert_eq!((again.eos_id(), again.unk_id(), again.pad_id()), (0, 1, 2));
        for t in [text, "a cat jumps over the fence", "", "  ☃ ball "] {
            assert_eq!(
                again.encode_source(t).unwrap(),
                tok.encode_source(t).unwrap(),
                "{kind:?} {t:?}"
            );
            let ids = tok.encode_target(t).unwrap();
            assert_eq!(again.decode(&ids).unwrap(), tok.decode(&ids).unwrap());
        }
        assert_eq!(
            again.encode_source_batch(&[text, "a"]).unwrap(),
            vec![
                tok.encode_source(text).unwrap(),
                tok.encode_source("a").unwrap()
            ]
        );
    }
}

#[test]
fn train_joint_names_a_missing_file() {
    let e = train_joint(
        &[PathBuf::from("/nonexistent/corpus.txt")],
        TokenizerKind::Bpe,
        100,
    )
    .expect_err("an error");
    assert!(e.to_string().contains("/nonexistent/corpus.txt"), "{e}");
}
