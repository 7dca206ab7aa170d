#!/usr/bin/env bash
# run-broker.sh PKI_DIR DATA_DIR PORT [PREFIX]
# Renders mosquitto.conf.in into DATA_DIR/mosquitto.conf and execs mosquitto in the
# foreground (the process id stays the same, so callers can signal it directly).
# PKI_DIR must come from `pki.sh init`; PREFIX, if given, must match the prefix the ACL was
# rendered with (PKI_DIR/prefix). Log: DATA_DIR/mosquitto.log.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { echo "usage: run-broker.sh PKI_DIR DATA_DIR PORT [PREFIX]" >&2; exit 2; }
(($# == 3 || $# == 4)) || usage
pki="$1" data="$2" port="$3" prefix="${4:-}"
[[ "$port" =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65535)) || { echo "run-broker.sh: bad PORT '$port'" >&2; exit 2; }
# crl.pem: a PKI directory made by an older pki.sh has none; `pki.sh init` adds it.
for f in ca.crt server.crt server.key acl crl.pem; do
  [[ -f "$pki/$f" ]] || { echo "run-broker.sh: $pki/$f missing (run pki.sh init $pki)" >&2; exit 1; }
done
pki="$(cd "$pki" && pwd)"
if [[ -n "$prefix" ]]; then
  have="$(cat "$pki/prefix" 2>/dev/null || echo ota/v1)"
  [[ "$have" == "$prefix" ]] || { echo "run-broker.sh: ACL in $pki uses prefix '$have', not '$prefix'" >&2; exit 2; }
fi
# The placeholders are substituted with sed using '|' as delimiter.
for v in "$pki" "$data"; do
  [[ "$v" != *"|"* && "$v" != *" "* ]] || { echo "run-broker.sh: paths must not contain '|' or spaces: $v" >&2; exit 2; }
done
mkdir -p "$data"
data="$(cd "$data" && pwd)"
user="$(id -un)"
sed -e "s|@PORT@|$port|g" -e "s|@PKI_DIR@|$pki|g" -e "s|@DATA_DIR@|$data|g" \
    -e "s|@USER@|$user|g" "$SCRIPT_DIR/mosquitto.conf.in" >"$data/mosquitto.conf.tmp"
mv -f "$data/mosquitto.conf.tmp" "$data/mosquitto.conf"
exec mosquitto -c "$data/mosquitto.conf"
