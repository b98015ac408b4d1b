//! `rdrop score` reads its files as `rdrop train` reads a corpus: a byte-order mark and CRLF line
//! endings change nothing, and invalid UTF-8 is named by file, line and column.

mod common;

use common::{fixtures, Sandbox};

fn opus() -> String {
    fixtures().join("models/opus").display().to_string()
}

/// `rdrop score` of two files in the sandbox, with `extra` flags.
fn score(sb: &Sandbox, source: &str, target: &str, extra: &[&str]) -> common::Rdrop {
    sb.rdrop()
        .args(["score", "--model", &opus(), "-q", "--source", source])
        .args(["--target", target])
        .args(extra)
}

#[test]
fn bom_and_crlf_files_score_like_plain_ones() {
    let sb = Sandbox::new();
    // Text through the tokenizer, and token ids, where a BOM kept in the first line would not
    // even parse as an id.
    for (extra, src, tgt) in [
        (
            &[][..],
            ["Trainna.", "Regon bourur."],
            ["Trainna.", "Bourur."],
        ),
        (&["--token-ids"][..], ["5 6 7", "8 9"], ["10 11", "12"]),
    ] {
        sb.write("src.txt", format!("{}\n{}\n", src[0], src[1]));
        sb.write("tgt.txt", format!("{}\n{}\n", tgt[0], tgt[1]));
        sb.write(
            "src-bom.txt",
            format!("\u{feff}{}\r\n{}\r\n", src[0], src[1]),
        );
        sb.write("tgt-bom.txt", format!("\u{feff}{}\r\n{}", tgt[0], tgt[1]));
        let plain = score(&sb, "src.txt", "tgt.txt", extra).ok();
        assert_eq!(plain.lines().count(), 2, "{plain}");
        let bom = score(&sb, "src-bom.txt", "tgt-bom.txt", extra).ok();
        assert_eq!(bom, plain, "{extra:?}");
    }
}

#[test]
fn invalid_utf8_is_named_by_file_line_and_column() {
    let sb = Sandbox::new();
    sb.write("src.txt", "Trainna.\nTrainna.\n");
    sb.write("tgt.txt", b"Trainna.\nTra\xffinna.\n");
    let err = score(&sb, "src.txt", "tgt.txt", &[]).fails();
    assert!(
        err.contains("tgt.txt:2: invalid UTF-8 at line 2, column 4"),
        "{err}"
    );
}
