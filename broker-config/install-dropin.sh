#!/usr/bin/env bash
# install-dropin.sh PKI_DIR [--port P] [--listen ADDR] [--dest DIR] [--conf-dir DIR] [--owner USER]
#
# Turns the system's mosquitto (Debian's mosquitto.service) into the OTA broker: copies what
# the broker needs from a `pki.sh init` directory (ca.crt, server.crt, server.key, crl.pem,
# acl) into DEST (default /etc/mosquitto/ota; the key 0600 and everything owned by USER,
# default mosquitto, the user Debian's broker drops to) and renders mosquitto.conf.in into
# CONF_DIR/ota.conf (default /etc/mosquitto/conf.d, which Debian's mosquitto.conf includes).
#
# The drop-in is the same configuration as run-broker.sh's, without the lines Debian's main
# file already sets (persistence_location, log_dest, user; the broker stays persistent and
# logs to /var/log/mosquitto/mosquitto.log). LISTEN: the address to bind (default: every
# interface; devices connect over the network, always with TLS and a client certificate).
# Idempotent: run it again after `pki.sh device|revoke` (new ACL, new CRL), then
# `systemctl reload mosquitto` (SIGHUP re-reads both; a revoked device that is connected
# needs `systemctl restart mosquitto`). The controller's acl-file can point at DEST/acl.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
  echo "usage: install-dropin.sh PKI_DIR [--port P] [--listen ADDR] [--dest DIR] [--conf-dir DIR] [--owner USER]" >&2
  exit 2
}
(($# >= 1)) || usage
pki="$1"; shift
port=8883 listen="" dest=/etc/mosquitto/ota conf_dir=/etc/mosquitto/conf.d owner=mosquitto
while (($#)); do
  (($# >= 2)) || usage
  case "$1" in
    --port) port="$2" ;;
    --listen) listen="$2" ;;
    --dest) dest="$2" ;;
    --conf-dir) conf_dir="$2" ;;
    --owner) owner="$2" ;;
    *) usage ;;
  esac
  shift 2
done
[[ "$port" =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65535)) || { echo "install-dropin.sh: bad port '$port'" >&2; exit 2; }
[[ -z "$listen" || "$listen" =~ ^[0-9A-Za-z.:-]+$ ]] || { echo "install-dropin.sh: bad address '$listen'" >&2; exit 2; }
for f in ca.crt server.crt server.key crl.pem acl; do
  [[ -f "$pki/$f" ]] || { echo "install-dropin.sh: $pki/$f missing (run pki.sh init $pki)" >&2; exit 1; }
done
for v in "$dest" "$conf_dir"; do
  [[ "$v" != *"|"* && "$v" != *" "* ]] || { echo "install-dropin.sh: paths must not contain '|' or spaces: $v" >&2; exit 2; }
done
# chown only where it means something (root, and the user exists).
chown_to=""
if [[ $(id -u) -eq 0 ]] && getent passwd "$owner" >/dev/null; then chown_to="$owner"; fi

mkdir -p "$dest" "$conf_dir"
dest="$(cd "$dest" && pwd)"
chmod 0755 "$dest"
for f in ca.crt server.crt crl.pem acl server.key; do
  mode=0644
  [[ "$f" == server.key ]] && mode=0600
  install -m "$mode" "$pki/$f" "$dest/$f.tmp"
  [[ -z "$chown_to" ]] || chown "$chown_to:" "$dest/$f.tmp"
  mv -f "$dest/$f.tmp" "$dest/$f"
done
{
  echo "# OTA broker drop-in, rendered by install-dropin.sh from $SCRIPT_DIR/mosquitto.conf.in"
  echo "# (PKI files in $dest). Do not edit: change the template or the script's options and run it again."
  sed -e "s|@PORT@|$port|g" -e "s|@PKI_DIR@|$dest|g" \
    -e '/^persistence_location /d' -e '/^log_dest /d' -e '/^user /d' \
    -e "s|^listener $port 127\.0\.0\.1\$|listener $port${listen:+ $listen}|" \
    "$SCRIPT_DIR/mosquitto.conf.in"
} >"$conf_dir/ota.conf.tmp"
if grep -v '^#' "$conf_dir/ota.conf.tmp" | grep -q '@[A-Z_]*@'; then
  echo "install-dropin.sh: unrendered placeholder left in the drop-in:" >&2
  grep -v '^#' "$conf_dir/ota.conf.tmp" | grep '@[A-Z_]*@' >&2
  rm -f "$conf_dir/ota.conf.tmp"
  exit 1
fi
grep -q "^listener $port" "$conf_dir/ota.conf.tmp" || { echo "install-dropin.sh: no listener line for port $port in the template" >&2; exit 1; }
chmod 0644 "$conf_dir/ota.conf.tmp"
mv -f "$conf_dir/ota.conf.tmp" "$conf_dir/ota.conf"
echo "install-dropin.sh: wrote $conf_dir/ota.conf (port $port${listen:+, address $listen}) and $dest/{ca.crt,server.crt,server.key,crl.pem,acl}"
echo "install-dropin.sh: now: systemctl restart mosquitto"
