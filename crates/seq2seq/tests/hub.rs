//! Hub ids through hf-hub's cache layout, offline: a model present in the cache loads, an absent one
//! gives a clear error. One test function, because it sets process-wide environment variables.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::fixture_dir;
use rdrop_seq2seq::{checkpoint, Error};

/// Lays out `models--{org}--{name}/{blobs,refs/main,snapshots/<rev>/...}` as huggingface_hub does
/// (snapshot files are copies here instead of symlinks into blobs/, which readers do not distinguish).
fn fake_cache_entry(cache: &Path, repo: &str, rev: &str, from: &Path, with_newline: bool) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = repo_dir.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).expect("mkdir");
    std::fs::create_dir_all(repo_dir.join("refs")).expect("mkdir");
    std::fs::create_dir_all(repo_dir.join("blobs")).expect("mkdir");
    let r = if with_newline {
        format!("{rev}\n")
    } else {
        rev.to_string()
    };
    std::fs::write(repo_dir.join("refs").join("main"), r).expect("ref");
    for f in ["config.json", "model.safetensors", "vocab.json"] {
        std::fs::copy(from.join(f), snap.join(f)).expect("copy");
    }
}

#[test]
fn hub_ids_resolve_through_the_cache_offline() {
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("hf-home");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    fake_cache_entry(
        &home.join("hub"),
        "tiny-org/opus-tiny",
        rev,
        &fixture_dir("opus"),
        false,
    );
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", &home);
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let dir = checkpoint::resolve("tiny-org/opus-tiny").expect("cached model resolves");
    assert!(
        dir.ends_with(Path::new("snapshots").join(rev)),
        "{}",
        dir.display()
    );
    let (cfg, _) =
        checkpoint::load("tiny-org/opus-tiny", DType::F32, &Device::Cpu).expect("load from cache");
    assert_eq!(cfg.vocab_size, 128);
    // An explicit revision (commit hash) needs no ref.
    checkpoint::resolve(&format!("tiny-org/opus-tiny@{rev}")).expect("by commit");

    match checkpoint::resolve("tiny-org/not-there") {
        Err(e @ Error::NotCached { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("tiny-org/not-there") && msg.contains("offline"),
                "{msg}"
            );
        }
        other => panic!("expected NotCached, got {other:?}"),
    }

    // HF_HUB_CACHE takes precedence over HF_HOME, and refs written with a newline still resolve.
    let cache2 = tmp.path().join("cache2");
    fake_cache_entry(&cache2, "other/model", rev, &fixture_dir("opus"), true);
    std::env::set_var("HF_HUB_CACHE", &cache2);
    checkpoint::resolve("other/model").expect("HF_HUB_CACHE used");
    assert!(matches!(
        checkpoint::resolve("tiny-org/opus-tiny"),
        Err(Error::NotCached { .. })
    ));
    std::env::remove_var("HF_HUB_CACHE");

    // Online, a complete cached copy is used without a request; a missing model is fetched, and a
    // failed fetch names the model and file (the endpoint refuses connections).
    std::env::remove_var("HF_HUB_OFFLINE");
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    checkpoint::resolve("tiny-org/opus-tiny").expect("cached copy used online");
    match checkpoint::resolve("tiny-org/not-there") {
        Err(e @ Error::Hub { .. }) => assert!(e.to_string().contains("config.json"), "{e}"),
        other => panic!("expected a hub error, got {other:?}"),
    }
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::remove_var("HF_ENDPOINT");

    // A missing path is said to be one, not looked up on the hub; neither a path nor a hub id.
    assert!(matches!(
        checkpoint::resolve("./no/such/dir"),
        Err(Error::NoSuchPath {
            kind: "directory",
            ..
        })
    ));
    assert!(matches!(
        checkpoint::resolve("no such model"),
        Err(Error::NotFound(_))
    ));
}
