//! `rdrop --version` names the commit the binary was built from (as git reports it for the
//! checkout) and the devices compiled in, so a report that quotes it can be reproduced.

mod common;

use common::Sandbox;

#[test]
fn version_names_commit_and_devices() {
    let out = Sandbox::new().rdrop().args(["--version"]).ok();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match commit {
        // The build saw the same HEAD unless a commit happened since; rebuilds follow HEAD.
        Some(c) => assert!(out.contains(&format!("(commit {c}")), "{out} vs {c}"),
        None => eprintln!("skipping the commit check: no git checkout here"),
    }
    assert!(
        out.starts_with(concat!("rdrop ", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    let cuda = if cfg!(feature = "cuda") { ", cuda" } else { "" };
    assert!(out.contains(&format!("devices: cpu{cuda})")), "{out}");
}
