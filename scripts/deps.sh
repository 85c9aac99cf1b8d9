#!/usr/bin/env bash
# Installs the Debian packages kubewire's commands and tests use, only those missing.
#   scripts/deps.sh run    what `make up` needs
#   scripts/deps.sh test   what `make test` needs (real clients nobody here wrote)
#   scripts/deps.sh bench  the peers and load generators of the benchmarks (bench/gateway.sh,
#                          iperf3 for the data path benches, iptables-restore for policy's)
set -euo pipefail

# kubectl is not among them: Debian does not package it (see below).
run_pkgs=(iproute2 curl ca-certificates iputils-ping)
test_pkgs=(iproute2 bind9-dnsutils nftables iptables iputils-ping curl ca-certificates containernetworking-plugins python3 python3-venv python3-prometheus-client nghttp2-client util-linux bird2 frr arping ndisc6 openssl wrk)
bench_pkgs=(nginx haproxy wrk nghttp2-client openssl util-linux iperf3 iptables)

case "${1:-run}" in
  run) pkgs=("${run_pkgs[@]}") ;;
  test) pkgs=("${test_pkgs[@]}") ;;
  bench) pkgs=("${bench_pkgs[@]}") ;;
  *) echo "usage: $0 run|test|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "kubewire needs root (it creates network namespaces); missing packages: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubectl, of the minor version the lab's API server reports (lab/apiserver's
# KUBERNETES_VERSION). Debian 12 has no kubectl package: when no configured apt source
# has one, the Kubernetes project's own apt repository is added (its documented way
# to install kubectl on Debian), with its signing key.
kubectl_minor=v1.32
if ! command -v kubectl >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "kubewire needs root (it creates network namespaces); kubectl is missing" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-cache policy kubectl | grep -q 'Candidate: [0-9]'; then
    echo "adding the Kubernetes apt repository (pkgs.k8s.io, $kubectl_minor) for kubectl"
    install -d -m 0755 /etc/apt/keyrings
    curl -fsSL "https://pkgs.k8s.io/core:/stable:/$kubectl_minor/deb/Release.key" \
      -o /etc/apt/keyrings/kubernetes-apt-keyring.asc
    echo "deb [signed-by=/etc/apt/keyrings/kubernetes-apt-keyring.asc] https://pkgs.k8s.io/core:/stable:/$kubectl_minor/deb/ /" \
      >/etc/apt/sources.list.d/kubernetes.list
    apt-get update -qq
  fi
  echo "installing: kubectl"
  apt-get install -y -qq --no-install-recommends kubectl >/dev/null
fi

# The Rust tools the commands use.
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
# The Python kubernetes client, for the API server's black-box tests; OpenTelemetry's
# protobuf messages, for the mesh's trace collector; gRPC's own Python library, for the
# mesh's gRPC client and server: in a virtualenv under target/, so the machine's own
# Python packages stay as they are.
if [[ ${1:-run} == test ]]; then
  venv=target/python-clients
  if ! "$venv/bin/python" -c "import kubernetes, opentelemetry.proto, grpc" 2>/dev/null; then
    echo "installing the Python kubernetes client, opentelemetry-proto and grpcio into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes==37.0.2 \
      opentelemetry-proto==1.45.2 grpcio==1.85.1
  fi
fi
if [[ ${1:-run} == test ]] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
