#!/usr/bin/env bash
# README's second command and CI's: installs what is missing, checks format
# and lints, then runs the whole test suite (unit, property, integration,
# interop, examples, bench smoke runs and doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
# The benches in smoke mode (one tiny point each, figures only checked for
# sanity); then unit, property and integration tests, the examples (built as
# programs and run by tests/examples.rs) and doc tests.
cargo test --benches "$@"
cargo test "$@"
