//! `rdrop plot` draws a PNG of the training curves of one or more runs: the image has the size it
//! should, and it changes when the data does (a plot that ignored its input would not).

mod common;

use common::{tiny_run, Sandbox};

/// Width and height from a PNG's IHDR chunk (bytes 16..24, big-endian).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn plot_draws_the_runs_and_follows_the_data() {
    let sb = Sandbox::new();
    tiny_run(&sb, "");
    sb.rdrop()
        .args(["train", "tiny.toml", "--set", "validation.every_updates=2"])
        .ok();
    // The training loop keeps its own copy up to date.
    let own = std::fs::read(sb.path().join("run/curves.png")).unwrap();
    assert_eq!(png_size(&own), (1800, 820));

    let out = sb.rdrop().args(["plot", "run", "-o", "a.png"]).ok();
    assert!(out.contains("wrote a.png"), "{out}");
    let a = std::fs::read(sb.path().join("a.png")).unwrap();
    assert_eq!(png_size(&a), (1800, 820));
    // Half the records: a different picture.
    let metrics = std::fs::read_to_string(sb.path().join("run/metrics.jsonl")).unwrap();
    let lines: Vec<&str> = metrics.lines().collect();
    sb.write(
        "half/metrics.jsonl",
        lines[..lines.len() / 2].join("\n") + "\n",
    );
    sb.rdrop().args(["plot", "half", "-o", "b.png"]).ok();
    let b = std::fs::read(sb.path().join("b.png")).unwrap();
    assert_ne!(a, b, "the plot must change with the data");
    // Two runs overlaid, against wall time.
    sb.rdrop()
        .args([
            "plot",
            "run",
            "half/metrics.jsonl",
            "--x",
            "wall",
            "-o",
            "c.png",
        ])
        .ok();
    let c = std::fs::read(sb.path().join("c.png")).unwrap();
    assert!(c != a && c != b);
    let err = sb.rdrop().args(["plot", "nope", "-o", "d.png"]).fails();
    assert!(err.contains("nope: no such run directory"), "{err}");
    let err = sb.rdrop().args(["plot", "data", "-o", "d.png"]).fails();
    assert!(
        err.contains("data/metrics.jsonl") && err.contains("os error 2"),
        "{err}"
    );
}
