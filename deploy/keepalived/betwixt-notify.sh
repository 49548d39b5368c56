#!/bin/sh
# keepalived notify script: records this node's VRRP state and logs the transition.
# keepalived runs it as: betwixt-notify.sh STATE_FILE TYPE NAME STATE PRIORITY
set -eu
state_file=$1
name=$3
state=$4
printf '%s\n' "$state" >"$state_file.tmp"
mv "$state_file.tmp" "$state_file"
if command -v logger >/dev/null 2>&1; then
    logger -t betwixt-vrrp "$name is now $state" || true
fi
