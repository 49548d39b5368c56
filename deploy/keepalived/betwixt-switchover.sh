#!/bin/sh
# Planned switchover: hand this node's virtual address to its peer without cutting a session.
#
#   betwixt-switchover.sh [DEADLINE]      (default 5m; Go syntax: 30s, 2m)
#
# 1. `betwixt drain` closes the listeners: new connections to this node are refused (clients
#    retry), established sessions go on. The address stays here while they do, since moving
#    it would cut them.
# 2. Once no session is left (or DEADLINE closed the rest), /healthz turns `not ok`,
#    keepalived's track_script fails and the peer takes the address (about advert_int).
# 3. Once the address is gone, `betwixt undrain` makes this node a fit BACKUP again.
#
# Environment: BETWIXT (default /usr/bin/betwixt), BETWIXT_API (default
# http://127.0.0.1:8888), BETWIXT_API_LOGIN and BETWIXT_API_PASSWORD for [api.basic_auth],
# VIP (the virtual address without its prefix length; if unset, step 3 waits 5 s instead).
set -eu
deadline=${1:-5m}
betwixt=${BETWIXT:-/usr/bin/betwixt}
api=${BETWIXT_API:-http://127.0.0.1:8888}
set -- --api "$api"
if [ -n "${BETWIXT_API_LOGIN:-}" ]; then
    set -- "$@" --login "$BETWIXT_API_LOGIN" --password "${BETWIXT_API_PASSWORD:-}"
fi

"$betwixt" drain "$@" --deadline "$deadline" --wait
if [ -n "${VIP:-}" ]; then
    # Bounded: keepalived's check runs every second; give it a minute at most.
    tries=0
    while ip -o addr show | grep -qw "inet $VIP" && [ "$tries" -lt 600 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
else
    sleep 5
fi
"$betwixt" undrain "$@"
