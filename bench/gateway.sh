#!/usr/bin/env bash
# The gateway's data plane against nginx and HAProxy (Debian's packages), configured for
# the same routes (/svc0/ .. /svc9/ and a catch-all) to the same backend (an nginx that
# answers 200 "ok"), each proxy pinned to the same core with one worker, the backend and
# the load generators on the other core; one run, side by side, all on loopback:
#   requests/s and p50/p99 (wrk) for HTTP/1.1 keep-alive, a new connection per request,
#   HTTPS keep-alive; requests/s and mean latency (h2load) for HTTP/2 over TLS;
#   the gateway's resident memory at 10 and at 10,000 routes.
# Usage: bench/gateway.sh [SECONDS per run] (default 10). Needs 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
scripts/deps.sh bench >/dev/null
cargo build --release -p gateway --example bench_serve
dir="$(mktemp -d /var/tmp/kubewire-gateway-bench.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
proxy_cpu=0
load_cpu=1

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=bench.example \
    -addext subjectAltName=DNS:bench.example 2>/dev/null
cat "$dir/cert.pem" "$dir/key.pem" >"$dir/haproxy.pem"

cat >"$dir/backend.conf" <<EOF
worker_processes 1; daemon off; pid $dir/backend.pid; error_log $dir/backend.err;
events { worker_connections 20000; }
http {
  access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:18080 backlog=4096; location / { return 200 "ok\n"; } }
}
EOF

locations=""
acls=""
for i in $(seq 0 9); do
    locations+="    location /svc$i/ { proxy_pass http://backend; }"$'\n'
    acls+="  use_backend be if { path_beg /svc$i/ }"$'\n'
done
cat >"$dir/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $dir/nginx.pid; error_log $dir/nginx.err;
events { worker_connections 20000; }
http {
  access_log off; keepalive_requests 10000000;
  upstream backend { server 127.0.0.1:18080; keepalive 512; }
  server {
    listen 127.0.0.1:18082 backlog=4096;
    listen 127.0.0.1:18444 ssl http2 backlog=4096;
    ssl_certificate $dir/cert.pem; ssl_certificate_key $dir/key.pem;
    proxy_http_version 1.1; proxy_set_header Connection "";
$locations    location / { proxy_pass http://backend; }
  }
}
EOF
cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:18083
  bind 127.0.0.1:18445 ssl crt $dir/haproxy.pem alpn h2,http/1.1
$acls  default_backend be
backend be
  server b1 127.0.0.1:18080
EOF

taskset -c "$load_cpu" nginx -c "$dir/backend.conf" &
pids+=($!)
taskset -c "$proxy_cpu" target/release/examples/bench_serve --http 18081 --https 18443 \
    --cert "$dir/cert.pem" --key "$dir/key.pem" --backend 127.0.0.1:18080 --routes 10 --threads 1 \
    --admin 127.0.0.1:18877 &
gateway_pid=$!
pids+=($gateway_pid)
taskset -c "$proxy_cpu" nginx -c "$dir/nginx.conf" &
pids+=($!)
taskset -c "$proxy_cpu" haproxy -f "$dir/haproxy.cfg" -db &
pids+=($!)

declare -A http_port=([gateway]=18081 [nginx]=18082 [haproxy]=18083)
declare -A https_port=([gateway]=18443 [nginx]=18444 [haproxy]=18445)
for p in gateway nginx haproxy; do
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:${http_port[$p]}/svc5/x" >/dev/null && break
        sleep 0.1
    done
    curl -sfk --http2 "https://127.0.0.1:${https_port[$p]}/svc5/x" >/dev/null
done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "proxies on cpu $proxy_cpu (one worker each), backend and load on cpu $load_cpu; ${secs}s per run"
echo "nginx $(nginx -v 2>&1 | cut -d/ -f2), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), h2load $(h2load --version | awk '{print $2}')"

wrk_run() { # url [header]
    local out
    if [ -n "${2:-}" ]; then
        out="$(taskset -c "$load_cpu" wrk -t1 -c64 -d"${secs}s" --latency -H "$2" "$1")"
    else
        out="$(taskset -c "$load_cpu" wrk -t1 -c64 -d"${secs}s" --latency "$1")"
    fi
    local rps p50 p99 errors
    rps="$(awk '/Requests\/sec/{print $2}' <<<"$out")"
    p50="$(awk '$1=="50%"{print $2}' <<<"$out")"
    p99="$(awk '$1=="99%"{print $2}' <<<"$out")"
    errors="$(awk '/Non-2xx|Socket errors/{printf "%s ", $0}' <<<"$out")"
    printf "%12s %10s %10s  %s\n" "$rps" "$p50" "$p99" "$errors"
}

h2_run() { # url
    local out rps mean
    out="$(taskset -c "$load_cpu" h2load -c 16 -m 10 -D "$secs" "$1" 2>&1)"
    rps="$(awk '/^finished in/{print $4}' <<<"$out")"
    mean="$(awk '/time for request:/{print $6}' <<<"$out")"
    printf "%12s %10s %10s  %s\n" "$rps" "$mean(mean)" "-" "$(grep -m1 '^requests:' <<<"$out")"
}

printf "\n%-34s %12s %10s %10s\n" "run" "req/s" "p50" "p99"
for p in gateway nginx haproxy; do
    printf "%-34s " "$p HTTP/1.1 keep-alive"
    wrk_run "http://127.0.0.1:${http_port[$p]}/svc5/x"
done
for p in gateway nginx haproxy; do
    printf "%-34s " "$p HTTP/1.1 new connection each"
    wrk_run "http://127.0.0.1:${http_port[$p]}/svc5/x" "Connection: close"
done
for p in gateway nginx haproxy; do
    printf "%-34s " "$p HTTPS keep-alive"
    wrk_run "https://127.0.0.1:${https_port[$p]}/svc5/x"
done
for p in gateway nginx haproxy; do
    printf "%-34s " "$p HTTP/2 over TLS (h2load)"
    h2_run "https://127.0.0.1:${https_port[$p]}/svc5/x"
done

rss() { awk '/VmRSS/{print $2 / 1024 " MiB"}' "/proc/$1/status"; }
echo
echo "gateway resident memory, 10 routes, after the runs: $(rss "$gateway_pid")"
taskset -c "$proxy_cpu" target/release/examples/bench_serve --http 18091 --backend 127.0.0.1:18080 \
    --routes 10000 --threads 1 --admin 127.0.0.1:18878 &
big_pid=$!
pids+=($big_pid)
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:18091/svc9999/x" >/dev/null && break
    sleep 0.1
done
echo "gateway resident memory, 10,000 routes, idle: $(rss "$big_pid")"
taskset -c "$load_cpu" wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:18091/svc9999/x" >/dev/null
echo "gateway resident memory, 10,000 routes, after ${secs}s of keep-alive load: $(rss "$big_pid")"
