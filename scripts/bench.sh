#!/usr/bin/env bash
# End-to-end benchmark of betwixt beside HAProxy and nginx on loopback (BENCHMARKS.md).
#
#   scripts/bench.sh                       # everything, 5 repetitions, ~30 minutes
#   scripts/bench.sh --quick               # every workload briefly: checks the harness
#   scripts/bench.sh --workloads bulk,pingpong --targets betwixt-splice,haproxy --reps 5
#
# Flags go to the bench binary (`cargo bench --bench e2e -- FLAGS`); BENCH_WORKLOADS,
# BENCH_TARGETS, BENCH_REPS, BENCH_QUICK, BENCH_CORES work too. As root, missing tools are installed with
# apt-get; otherwise the targets and workloads that need them are skipped with a note.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v iperf3 >/dev/null || missing+=(iperf3)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v nginx >/dev/null || missing+=(nginx)
command -v dnsperf >/dev/null || missing+=(dnsperf)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v openssl >/dev/null || missing+=(openssl)
# perf counts the balancers' system calls and context switches (connrate, keepalive, dns).
command -v perf >/dev/null || missing+=(linux-perf)
if command -v nginx >/dev/null && ! nginx -V 2>&1 | grep -q -- '--with-stream\( \|$\)' \
    && ! ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1; then
    missing+=(libnginx-mod-stream)
elif ! command -v nginx >/dev/null; then
    missing+=(libnginx-mod-stream)
fi
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "bench.sh: installing ${missing[*]}" >&2
        # A system haproxy or nginx service this may start does not interfere: the bench runs
        # its own instances with their own configs on free loopback ports.
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bench.sh: not installed: ${missing[*]} (targets needing them are skipped)" >&2
    fi
fi

echo "bench.sh: load average before the build: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
export BENCH_COMMAND="scripts/bench.sh${*:+ $*}"
exec cargo bench --bench e2e -- "$@"
