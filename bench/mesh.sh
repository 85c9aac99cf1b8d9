#!/usr/bin/env bash
# The mesh's data path, side by side in one run (needs root; everything inside
# throwaway network namespaces, no traffic leaves them): a client pod and a server pod
# with the CNI plugin's capture and `kubewire mesh proxy` (release build) each, nginx as
# the server; the latency at a fixed request rate without the proxies, through them as
# HTTP, and through them as opaque TCP; each proxy's memory idle and under load; their
# CPU per 1,000 requests/s.
# See crates/mesh/benches/proxy.rs. Settings: RATE (1000), SECONDS per round (5),
# ROUNDS (6).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench >/dev/null
cargo build -q --release -p kubewire
echo "== machine: $(nproc) vCPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r), nginx $(nginx -v 2>&1 | cut -d/ -f2), load $(cut -d' ' -f1-3 /proc/loadavg)"
KUBEWIRE_BIN="$PWD/target/release/kubewire" cargo bench -q -p mesh --bench proxy 2>&1 | grep -v '^$'
