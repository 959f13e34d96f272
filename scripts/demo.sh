#!/usr/bin/env bash
# README's first command: installs what is missing, builds the examples and
# runs the discovery demo (five peers as separate processes, one killed and
# restarted). Extra arguments go to the demo (--interval-ms, --miss-limit).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --features cli --bins --examples
exec target/release/examples/discovery_demo "$@"
