#!/usr/bin/env bash
# README's first command: installs what is missing, then runs the main demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo run --release --example quickstart -- "$@"
