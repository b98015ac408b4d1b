//! Every recipe shipped under recipes/ parses and validates (no training).

use rdrop_train::recipe::Recipe;
use std::path::Path;

#[test]
fn every_shipped_recipe_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let r = Recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(!r.output_dir.as_os_str().is_empty(), "{}", p.display());
            n += 1;
        }
    }
    assert!(n >= 4, "expected the shipped recipes in {}", dir.display());
}

#[test]
fn multi30k_recipes_differ_only_in_criterion_and_output() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let base = Recipe::load(&dir.join("multi30k-de-en-baseline.toml"), &[]).unwrap();
    let mut rdrop = Recipe::load(&dir.join("multi30k-de-en-rdrop.toml"), &[]).unwrap();
    assert_ne!(base.criterion.kind, rdrop.criterion.kind);
    rdrop.criterion = base.criterion.clone();
    rdrop.output_dir = base.output_dir.clone();
    assert_eq!(base, rdrop, "same model, data and budget");
}

#[test]
fn embedded_default_parses() {
    let r = rdrop_train::embedded::recipe(&[]).unwrap();
    assert_eq!(r.criterion.kind, rdrop_train::recipe::CriterionKind::Rdrop);
}
