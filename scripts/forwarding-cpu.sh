#!/usr/bin/env bash
# The whole machine's CPU per GB through betwixt, per forwarding mode (BENCHMARKS.md, "sockmap").
#
#   scripts/forwarding-cpu.sh [BETWIXT_BINARY]     # default target/release/betwixt
#
# An iperf3 server on 127.0.0.1, betwixt in front of it with forwarding = splice, sockmap and
# copy in turn, `iperf3 -c -t 8 -P N` through it for 1 and 8 streams, nothing pinned. Prints
# the busy time of all CPUs from /proc/stat (kernel workers and softirqs included) and the
# balancer process's own utime + stime, each per GB received. Run it as root (sockmap needs
# CAP_BPF and CAP_NET_ADMIN) on a quiet machine.
set -euo pipefail
BIN=${1:-target/release/betwixt}
SERVER_PORT=15201
BALANCER_PORT=15202
DIR=$(mktemp -d)
cleanup() {
    [[ -n ${BALANCER:-} ]] && kill "$BALANCER" 2>/dev/null || true
    [[ -n ${IPERF:-} ]] && kill "$IPERF" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
iperf3 -s -p "$SERVER_PORT" >/dev/null 2>&1 &
IPERF=$!
sleep 0.5

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
process_cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }

for mode in splice sockmap copy; do
    cat >"$DIR/$mode.toml" <<CONF
[logging]
level = "warn"
[betwixt]
forwarding = "$mode"
[servers.bulk]
bind = "127.0.0.1:$BALANCER_PORT"
[servers.bulk.discovery]
kind = "static"
static_list = ["127.0.0.1:$SERVER_PORT"]
[servers.bulk.healthcheck]
kind = "none"
CONF
    TOKIO_WORKER_THREADS=2 "$BIN" -c "$DIR/$mode.toml" 2>"$DIR/$mode.log" &
    BALANCER=$!
    sleep 0.7
    for streams in 1 8; do
        machine_before=$(busy)
        process_before=$(process_cpu "$BALANCER")
        result=$(iperf3 -c 127.0.0.1 -p "$BALANCER_PORT" -t 8 -P "$streams" -J |
            python3 -c 'import json, sys; d = json.load(sys.stdin)["end"]["sum_received"]; print(d["bytes"], d["bits_per_second"])')
        machine_after=$(busy)
        process_after=$(process_cpu "$BALANCER")
        read -r bytes bits <<<"$result"
        python3 - "$mode" "$streams" "$bytes" "$bits" "$machine_before" "$machine_after" \
            "$process_before" "$process_after" "$(getconf CLK_TCK)" <<'PY'
import sys
mode, streams, received, bits, m0, m1, p0, p1, tick = sys.argv[1:]
gb = int(received) / 1e9
print(f"{mode:8} {streams} stream(s): {float(bits) / 1e9:6.2f} Gbit/s, "
      f"machine CPU {(int(m1) - int(m0)) / int(tick) / gb:.3f} s/GB, "
      f"balancer process {(int(p1) - int(p0)) / int(tick) / gb:.3f} s/GB")
PY
    done
    kill "$BALANCER"
    wait "$BALANCER" 2>/dev/null || true
    BALANCER=
done
