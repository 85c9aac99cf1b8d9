#!/usr/bin/env bash
# CNI ADD/DEL latency per pod: kubewire vs the reference bridge + host-local plugins,
# interleaved in one run. Needs root (it makes network namespaces) and Debian's
# containernetworking-plugins (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo build --release -p kubewire
cargo bench -p e2e --bench cni_add_del
