#!/usr/bin/env bash
# README's second command and CI's: installs what is missing, checks format
# and lints, then runs the whole test suite (unit, property, integration,
# interop, examples and doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test "$@"
