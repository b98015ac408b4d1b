//! `--help` of the subcommands with many options groups them under headings (translate's and
//! score's are checked in cli_translate.rs).

mod common;

use common::Sandbox;

/// Asserts that each heading appears, in order, each followed by `option` before the next heading.
fn assert_grouped(help: &str, groups: &[(&str, &str)]) {
    let mut at = 0;
    for (heading, option) in groups {
        let h = help[at..]
            .find(&format!("\n{heading}:\n"))
            .unwrap_or_else(|| panic!("no {heading}: after byte {at}:\n{help}"))
            + at;
        let body = h + heading.len() + 2;
        let end = help[body..].find(":\n").map_or(help.len(), |e| body + e);
        assert!(
            help[body..end].contains(option),
            "{option} not under {heading}:\n{help}"
        );
        at = body;
    }
}

#[test]
fn train_and_bleu_help_are_grouped() {
    let sb = Sandbox::new();
    let help = sb.rdrop().args(["train", "--help"]).ok();
    assert_grouped(
        &help,
        &[
            ("Recipe", "--set"),
            ("Resume", "--resume-from"),
            ("Output", "--quiet"),
        ],
    );
    let help = sb.rdrop().args(["bleu", "--help"]).ok();
    assert_grouped(
        &help,
        &[
            ("Input", "--num-refs"),
            ("Metrics", "--metrics"),
            ("BLEU", "--tokenize"),
            ("chrF", "--chrf-word-order"),
            ("Significance", "--paired-bs"),
            ("Output", "--format"),
        ],
    );
}
