#!/usr/bin/env bash
# Builds the .deb (cargo deb), installs it with dpkg, checks the installed config with
# `betwixt check` and the installed unit with `systemd-analyze verify`, then purges it.
# Needs root (dpkg). Leaves the .deb under target/debian/.
#
# DEB_PROFILE=dev packages the debug build `cargo test` already made (CI: seconds instead of
# the release build's minutes); the default is release, the package to ship.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked
fi
deb=$(cargo deb --locked --profile "${DEB_PROFILE:-release}" | tail -n 1)
echo "built $deb"

if dpkg -s betwixt >/dev/null 2>&1; then
  echo "betwixt is already installed from a package; not touching it" >&2
  exit 1
fi
cleanup() { dpkg --purge betwixt >/dev/null || true; }
trap cleanup EXIT

dpkg -i "$deb"
test -x /usr/bin/betwixt
/usr/bin/betwixt check -c /etc/betwixt/betwixt.toml
dpkg-query -W -f='${Conffiles}\n' betwixt | grep -q '/etc/betwixt/betwixt.toml'
# The unit's binary must exist for verify; the drop-in points it at /usr/bin.
systemd-analyze verify /usr/lib/systemd/system/betwixt.service /usr/lib/systemd/system/betwixt.socket
test -x /usr/share/betwixt/keepalived/betwixt-notify.sh
test -f /usr/share/doc/betwixt/README.md
dpkg --purge betwixt
trap - EXIT
test ! -e /usr/bin/betwixt
echo "deb-check: ok"
