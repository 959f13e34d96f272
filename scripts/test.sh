#!/usr/bin/env bash
# README's second command and CI's: installs what is missing, checks format
# and lints, then runs the whole test suite (unit, property, integration,
# interop, examples, bench smoke runs and doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --check
# The library as a service embeds it (no features), then with the bench
# engine and the `chorus` command line.
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --all-features -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features --quiet
# The benches in smoke mode (one tiny point each, figures only checked for
# sanity); then unit, property and integration tests (tests/layers.rs checks
# the layer rule of src/), the examples (built as programs and run by
# tests/examples.rs) and doc tests.
cargo test --all-features --benches "$@"
cargo test --all-features --no-fail-fast "$@"
