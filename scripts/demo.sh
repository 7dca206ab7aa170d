#!/usr/bin/env bash
# End-to-end demo on the embedded default: a local TLS mosquitto from broker-config/, the
# controller with its SQLite database, and a simulated fleet of 20 devices on 1.0.0 that
# are updated to a freshly signed 1.1.0 by a 3-wave staged rollout (10%, 30%, the rest),
# shown live by `otactl watch`; one device defers its first offer (busy) and is offered
# again. Exits non-zero unless the rollout completes and every device ends on 1.1.0.
#
#   DEVICES=20 IMAGE_KIB=1024 KEEP=1 ./scripts/demo.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
devices="${DEVICES:-20}"
image_kib="${IMAGE_KIB:-1024}"
"$root/scripts/install-deps.sh"
if [[ "${OTA_SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building =="
  "$root/scripts/build.sh" "$root/build"
fi
bin="$root/build"
otactl="$bin/service/otactl"

run="$root/demo-run"
rm -rf "$run"
mkdir -p "$run"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds or time runs out.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then echo "demo: timed out waiting for $what" >&2; return 1; fi
    sleep 0.2
  done
}

echo "== PKI: CA, broker, controller, release signing key, $devices device certificates =="
"$root/broker-config/pki.sh" init "$run/pki" >/dev/null
"$root/broker-config/pki.sh" devices "$run/pki" "$devices" sim --group demo >/dev/null

broker_port="$(free_port)"
echo "== broker: mosquitto (TLS, client certificates, ACL) on 127.0.0.1:$broker_port =="
"$root/broker-config/run-broker.sh" "$run/pki" "$run/broker" "$broker_port" &
pids+=($!)
wait_for "broker port" 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$broker_port"

http_port="$(free_port)"
export OTA_API="http://127.0.0.1:$http_port"
echo "== controller: SQLite $run/controller.db, HTTP API $OTA_API (token $run/controller.db.token), web dashboard $OTA_API/ui/ while the demo runs, groups from $run/pki/acl =="
"$bin/service/ota-controller" --broker-port "$broker_port" --ca "$run/pki/ca.crt" \
  --cert "$run/pki/controller.crt" --key "$run/pki/controller.key" --db "$run/controller.db" \
  --store "$run/images" --signing-key "$run/pki/release.key" --http "127.0.0.1:$http_port" \
  --acl-file "$run/pki/acl" \
  >"$run/controller.out" 2>"$run/controller.log" &
pids+=($!)
# The controller creates its API bearer token (mode 0600) next to the database; otactl
# reads it from here.
export OTA_API_TOKEN_FILE="$run/controller.db.token"
wait_for "controller API" 15 "$otactl" status

echo "== fleet: $devices simulated devices on 1.0.0 =="
"$bin/device-agent/sim/ota-devsim" --count "$devices" --id-prefix sim --pki "$run/pki" \
  --data "$run/fleet" --port "$broker_port" --hw esp32-sim --group demo --defer-ids sim-002 \
  >"$run/devsim.out" 2>"$run/devsim.log" &
pids+=($!)
online() { [[ "$("$otactl" --json devices --online | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -ge "$devices" ]]; }
wait_for "$devices devices online" 60 online
"$otactl" devices

echo "== image 1.1.0 (${image_kib} KiB), signed with the release key =="
head -c "$((image_kib * 1024))" /dev/urandom >"$run/firmware-1.1.0.bin"
"$otactl" image add "$run/firmware-1.1.0.bin" --version 1.1.0 --hw esp32-sim
"$otactl" image list

echo "== rollout of 1.1.0 to group 'demo': waves 10% / 30% / rest, pause if a wave fails >20% =="
rollout="$("$otactl" --json rollout create 1.1.0 --group demo --name demo \
  --wave 10% --wave 30% --wave 100% --max-wave-failure 20 --max-failure 10 \
  --timeout 5m --retries 1 --start | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
status=0
"$otactl" watch "$rollout" || status=$?
"$otactl" rollout show "$rollout"
echo "== fleet after the update =="
"$otactl" devices
echo "== controller health (broker link, database, disk) =="
"$otactl" health || true
"$otactl" backup "$run/controller-backup.db" --force
not_updated="$("$otactl" --json devices | python3 -c '
import json, sys
print(sum(1 for d in json.load(sys.stdin) if d.get("version") != "1.1.0"))')"
if [[ "$status" -ne 0 || "$not_updated" -ne 0 ]]; then
  echo "demo: FAILED: $not_updated device(s) not on 1.1.0 (rollout watch exit $status); logs in $run" >&2
  exit 1
fi
echo "demo: all $devices devices run 1.1.0"
