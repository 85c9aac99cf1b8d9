#!/usr/bin/env bash
# The embedded API server: durable creates/s, list of 10,000 pods, watch delivery
# latency with 100 watchers at 1,000 writes/s, resident memory at 10,000 and 100,000
# objects, Service creates/s with 10,000 Services stored. Peers in the same run: the disk's fsync rate, and etcd (Debian's
# etcd-server, installed if missing) driven with the same objects through its JSON
# gateway on loopback. Usage: bench/apiserver.sh [OBJECTS] (default 100000)
# [--services-only | --watch-only] (only the fsync floor and the Service creates, or
# the watch delivery with each second's p99).
set -euo pipefail
cd "$(dirname "$0")/.."
objects="${1:-100000}"
extra=("${@:2}")
if ! command -v etcd >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server >/dev/null || true
fi
cargo build --release -p apiserver --example apiserver_bench
dir="$(mktemp -d /var/tmp/kubewire-apiserver-bench.XXXXXX)"
etcd_pid=""
cleanup() {
    if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT
peer=()
if command -v etcd >/dev/null; then
    etcd --name bench --data-dir "$dir/etcd" \
        --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
        --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
        --initial-cluster bench=http://127.0.0.1:23800 --log-level error >"$dir/etcd.log" 2>&1 &
    etcd_pid=$!
    for _ in $(seq 100); do
        curl -sf http://127.0.0.1:23790/health >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "etcd $(etcd --version | head -1 | awk '{print $3}') pid $etcd_pid"
    peer=(--etcd http://127.0.0.1:23790 --etcd-pid "$etcd_pid")
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, data dir on $(df --output=source "$dir" | tail -1)"
target/release/examples/apiserver_bench --dir "$dir/run" --objects "$objects" "${peer[@]}" "${extra[@]}"
