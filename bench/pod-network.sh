#!/usr/bin/env bash
# Pod-to-pod throughput and RTT, same node and across nodes, native and VXLAN, against
# node-to-node on the underlay, in one run. Needs root; installs iperf3 if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
command -v iperf3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null; }
cargo build --release -p kubewire
cargo bench -p e2e --bench pod_network
