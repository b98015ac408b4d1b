#!/usr/bin/env bash
# The test suite: lints, then every crate's unit, property, reference and CLI tests.
# Needs only a Rust toolchain and a C compiler; tests that read ../shared skip when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
