#!/usr/bin/env bash
# Installs the Debian packages kubewire's commands and tests use, only those missing.
#   scripts/deps.sh run    what `make up` needs
#   scripts/deps.sh test   what `make test` needs (real clients nobody here wrote)
set -euo pipefail

run_pkgs=(iproute2 kubectl curl iputils-ping)
test_pkgs=(iproute2 bind9-dnsutils nftables iptables iputils-ping curl containernetworking-plugins python3 python3-venv kubectl util-linux)

case "${1:-run}" in
  run) pkgs=("${run_pkgs[@]}") ;;
  test) pkgs=("${test_pkgs[@]}") ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
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

# The Rust tools the commands use.
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
# The Python kubernetes client, for the API server's black-box tests: in a virtualenv
# under target/, so the machine's own Python packages stay as they are.
if [[ ${1:-run} == test ]]; then
  venv=target/python-clients
  if ! "$venv/bin/python" -c "import kubernetes" 2>/dev/null; then
    echo "installing the Python kubernetes client into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes==37.0.2
  fi
fi
if [[ ${1:-run} == test ]] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
