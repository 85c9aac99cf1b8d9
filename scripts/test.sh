#!/usr/bin/env bash
# The whole test suite: every tier, as root, then a check that the tests left the host's
# networking exactly as they found it (scripts/host-snapshot before and after).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "the test suite needs root: its end-to-end tests create network namespaces" >&2
  exit 1
fi
scripts/deps.sh test

before=$(mktemp) after=$(mktemp)
trap 'rm -f "$before" "$after"' EXIT

# The end-to-end tests drive the real binary; cargo builds binaries only for their own
# package's tests, so build it first.
cargo build -p kubewire

scripts/host-snapshot >"$before"
status=0
cargo nextest run --workspace "$@" || status=$?
scripts/host-snapshot >"$after"

if diff -u "$before" "$after"; then
  echo "host-snapshot: unchanged by the tests"
else
  echo "host-snapshot: the tests changed the host's networking (diff above)" >&2
  status=1
fi
exit $status
