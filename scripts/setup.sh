#!/usr/bin/env bash
# Installs what building and testing chorus needs, only what is missing, so
# it is safe to run any number of times. Sourced by scripts/demo.sh and
# scripts/test.sh (it may extend PATH).
#   - cmake: the nng crate builds the NNG C library with it.
#   - python3 packages pynng + msgpack: the interoperability test's outside peer.
#   - iptables (as root only): the network-namespace fault suite (tests/netns.rs),
#     which skips itself where it cannot run.
set -euo pipefail

as_root() { [ "$(id -u)" = 0 ]; }
pip_install() {
  local flags=(--quiet --disable-pip-version-check)
  if as_root; then flags+=(--root-user-action=ignore); else flags+=(--user); fi
  python3 -m pip install "${flags[@]}" "$@"
}

export PATH="$HOME/.local/bin:$PATH"

if ! command -v cmake >/dev/null 2>&1; then
  echo "setup: installing cmake (needed to build NNG)" >&2
  if as_root && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
  else
    pip_install cmake
  fi
fi

if ! python3 -c 'import pynng, msgpack' >/dev/null 2>&1; then
  echo "setup: installing pynng and msgpack (interoperability test peer)" >&2
  pip_install pynng msgpack
fi

if as_root && ! command -v iptables >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing iptables (network-namespace fault tests)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null || \
    echo "setup: iptables not installed; tests/netns.rs will be skipped" >&2
fi
