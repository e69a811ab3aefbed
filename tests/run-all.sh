#!/usr/bin/env bash
# Runs every chordkv test: unit tests, deterministic simulations, and the real-process tests
# of the shipped `chordkv` binary on loopback. Installs what the tests need first, so it passes
# on a fresh Debian machine with Rust installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The process tests spawn target/debug/chordkv, which `cargo test` does not build for another
# package's tests: build every binary first.
cargo build --workspace --bins
cargo test --workspace
