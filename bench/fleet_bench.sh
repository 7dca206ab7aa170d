#!/usr/bin/env bash
# Fleet benchmark: N simulated devices (ota-devsim, real agent core, TLS, own certificates)
# fetch one image in one group deployment (one wave) through the real broker
# (broker-config/) and controller. For each N it prints the time until every device
# confirmed, the aggregate rate (N x image / time), the raw fan-out ceiling measured on the
# same broker in the same run before the controller starts (bench/fanout_bench: one plain
# publisher sends the image's frames once, QoS 1, on the group's image topic to N plain
# subscribers with the devices' certificates, subscribed with QoS 0 as the devices are,
# PROTOCOL.md 17) and the ratio to it, the same ceiling with QoS 1 subscriptions (raw_q1,
# last column: a PUBACK per frame and subscriber, as the devices had before; for reference),
# the bytes the controller
# published as a multiple of the image (egress/img) and of N images (per_dev), its CPU
# seconds and peak RSS, the broker's CPU seconds, broadcast frames and frames lost; also
# dl_s, until every device had the whole image, and its ratio to the raw fan-out.
# Devices listen on the group's image topic (broadcast, PROTOCOL.md 17) unless --unicast.
#
#   bench/fleet_bench.sh [--devices 100,300] [--image-kib 1024] [--chunk 4096] [--runs 1]
#                        [--per-process 250] [--build DIR] [--keep] [--idle SECONDS]
#                        [--unicast] [--no-raw] [--flash-dir DIR]
#
# --flash-dir DIR: where the simulated devices keep their flash and state (default: a
# directory under /dev/shm when it is writable, else the run directory). N devices' flash
# on one disk measures the disk, not delivery: at 1,000 devices on ext4 two thirds of the
# simulator's CPU went to the kernel (inode allocation for the state files the devices
# save by rename), and the simulator, not the controller or the broker, set the pace.
#
# --idle SECONDS: no deployment; once every device is online, the controller's and the
# broker's CPU (percent of one core) and the controller's RSS over SECONDS of a connected,
# heartbeating fleet (--heartbeat-ms 60000 on the devices, as the agent's default).
#
# Needs a build (scripts/build.sh build). Device certificates are made once per size and
# kept under $OTA_BENCH_DIR (default /tmp/ota-fleet-bench) between runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
devices_list="100,300"
image_kib=1024
chunk=4096
runs=1
per_process=250
build="$root/build"
keep=0
idle=0
unicast=0
raw=1
flash_dir=""
if [[ -d /dev/shm && -w /dev/shm ]]; then flash_dir="/dev/shm/ota-fleet-bench-$$"; fi
while (($#)); do
  case "$1" in
    --devices) devices_list="$2"; shift 2 ;;
    --image-kib) image_kib="$2"; shift 2 ;;
    --chunk) chunk="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --per-process) per_process="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --idle) idle="$2"; shift 2 ;;
    --unicast) unicast=1; shift ;;
    --no-raw) raw=0; shift ;;
    --flash-dir) flash_dir="$2"; shift 2 ;;
    *) echo "fleet_bench: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
otactl="$build/service/otactl"
controller_bin="$build/service/ota-controller"
devsim_bin="$build/device-agent/sim/ota-devsim"
fanout_bin="$build/bench/fanout_bench"
for b in "$otactl" "$controller_bin" "$devsim_bin" "$fanout_bin"; do
  [[ -x "$b" ]] || { echo "fleet_bench: $b missing: build first (scripts/build.sh $build)" >&2; exit 2; }
done
work="${OTA_BENCH_DIR:-/tmp/ota-fleet-bench}"
mkdir -p "$work"
tck="$(getconf CLK_TCK)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_s() { awk -v t="$tck" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
metric() {
  python3 - "$OTA_API/metrics" "$run/controller.db.token" "$1" <<'PY'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + open(sys.argv[2]).read().strip()})
for line in urllib.request.urlopen(req).read().decode().splitlines():
    if line.split(" ")[0] == sys.argv[3]:
        print(line.split(" ")[1])
PY
}
# wait_for WHAT SECS [--every POLL_S] CMD...: runs CMD every POLL_S (0.2) seconds until it succeeds.
wait_for() {
  local what="$1" secs="$2" poll=0.2; shift 2
  if [[ "$1" == --every ]]; then poll="$2"; shift 2; fi
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then echo "fleet_bench: timed out waiting for $what" >&2; return 1; fi
    sleep "$poll"
  done
}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  [[ -z "$flash_dir" || "$flash_dir" != /dev/shm/ota-fleet-bench-$$ ]] || rm -rf "$flash_dir"
}
trap cleanup EXIT

# process_sizes N: the device count of each simulator process (at most per_process each).
process_sizes() {
  local left="$1"
  while ((left > 0)); do
    echo $((left < per_process ? left : per_process))
    left=$((left - per_process))
  done
}
# pki_for N: a PKI with N device certificates in group "bench", named p<K>-001.. for
# simulator process K (made once, then reused).
pki_for() {
  local n="$1" dir="$work/pki-$1-$per_process" k=0
  # A PKI made before the broadcast image topics (PROTOCOL.md 17) has no ACL line letting
  # the devices read them: every device would be served by unicast. Made again.
  if [[ ! -f "$dir/.complete" ]] || ! grep -q '/img/+/chunk' "$dir/acl"; then
    rm -rf "$dir"
    echo "fleet_bench: making $n device certificates (once) in $dir" >&2
    "$root/broker-config/pki.sh" init "$dir" >/dev/null
    for c in $(process_sizes "$n"); do
      "$root/broker-config/pki.sh" devices "$dir" "$c" "p$k" --group bench >/dev/null
      k=$((k + 1))
    done
    touch "$dir/.complete"
  fi
  echo "$dir"
}

if ((idle > 0)); then
  printf '%-8s %8s %14s %12s %15s %14s\n' devices idle_s online_after_s ctl_cpu_pct ctl_rss_MiB broker_cpu_pct
else
  printf '%-8s %-9s %-9s %8s %8s %10s %6s %8s %8s %11s %8s %10s %12s %13s %9s %6s %12s\n' devices mode image_KiB \
    wall_s MiB/s raw_MiB/s ratio dl_s dl_ratio egress/img per_dev ctl_cpu_s ctl_rss_MiB broker_cpu_s bc_frames lost raw_q1_MiB/s
fi
mode=broadcast
((unicast)) && mode=unicast
IFS=, read -ra sizes <<<"$devices_list"
for n in "${sizes[@]}"; do
  pki="$(pki_for "$n")"
  for ((r = 1; r <= runs; r++)); do
    run="$work/run-$n-$r"
    rm -rf "$run"
    fleet="${flash_dir:-$run}/fleet-$n-$r"
    rm -rf "$fleet" && mkdir -p "$fleet"
    mkdir -p "$run"
    broker_port="$(free_port)"
    "$root/broker-config/run-broker.sh" "$pki" "$run/broker" "$broker_port" >"$run/broker.out" 2>&1 &
    broker_pid=$!
    pids+=("$broker_pid")
    wait_for "broker" 15 bash -c "exec 3<>/dev/tcp/127.0.0.1/$broker_port"
    raw_mibs="-" raw_q1_mibs="-"
    if ((raw && idle == 0)); then
      # The ceiling first: its clients use the controller's and the devices' identities.
      k=0
      for count in $(process_sizes "$n"); do
        for ((i = 1; i <= count; i++)); do printf 'p%d-%03d\n' "$k" "$i"; done
        k=$((k + 1))
      done >"$run/ids"
      # raw_fanout SUB_QOS: the aggregate MiB/s ("-" if it failed).
      raw_fanout() {
        "$fanout_bin" --port "$broker_port" --ca "$pki/ca.crt" --pub-cert "$pki/controller.crt" \
          --pub-key "$pki/controller.key" --pki "$pki" --ids-file "$run/ids" \
          --topic "$(cat "$pki/prefix")/grp/bench/img/0000000000000000/chunk" \
          --size-bytes "$((image_kib * 1024))" --chunk "$chunk" --sub-qos "$1" >"$run/fanout-q$1.out" 2>&1 ||
          { echo "fleet_bench: raw fan-out (QoS $1 subscriptions) failed:" >&2; cat "$run/fanout-q$1.out" >&2; }
        local mibs
        mibs="$(sed -n 's/.*aggregate_MiBps=\([0-9.]*\).*/\1/p' "$run/fanout-q$1.out")"
        echo "${mibs:--}"
      }
      raw_mibs="$(raw_fanout 0)"
      raw_q1_mibs="$(raw_fanout 1)"
    fi
    http_port="$(free_port)"
    export OTA_API="http://127.0.0.1:$http_port" OTA_API_TOKEN_FILE="$run/controller.db.token"
    "$controller_bin" --broker-port "$broker_port" --ca "$pki/ca.crt" --cert "$pki/controller.crt" \
      --key "$pki/controller.key" --db "$run/controller.db" --store "$run/images" \
      --signing-key "$pki/release.key" --http "127.0.0.1:$http_port" --acl-file "$pki/acl" \
      >"$run/controller.out" 2>"$run/controller.log" &
    ctl_pid=$!
    pids+=("$ctl_pid")
    wait_for "controller" 20 "$otactl" status
    # Simulator processes of at most per_process devices each (ids p<K>-001..).
    k=0
    for count in $(process_sizes "$n"); do
      "$devsim_bin" --count "$count" --id-prefix "p$k" --pki "$pki" \
        --data "$fleet" --port "$broker_port" --hw bench-hw --group bench --no-fsync \
        --heartbeat-ms 60000 $( ((unicast)) && echo --no-broadcast) \
        >"$run/devsim-$k.out" 2>"$run/devsim-$k.log" &
      pids+=($!)
      k=$((k + 1))
    done
    online() { [[ "$("$otactl" --json devices --online | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -ge "$n" ]]; }
    online_start=$SECONDS
    wait_for "$n devices online" 600 online
    if ((idle > 0)); then
      online_s=$((SECONDS - online_start))
      cpu0="$(cpu_s "$ctl_pid")" bcpu0="$(cpu_s "$broker_pid")"
      sleep "$idle"  # the measurement window, not synchronisation
      cpu1="$(cpu_s "$ctl_pid")" bcpu1="$(cpu_s "$broker_pid")"
      printf '%-8s %8s %14s %12s %15s %14s\n' "$n" "$idle" "$online_s" \
        "$(awk -v a="$cpu0" -v b="$cpu1" -v t="$idle" 'BEGIN {printf "%.2f", 100 * (b - a) / t}')" \
        "$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$ctl_pid/status")" \
        "$(awk -v a="$bcpu0" -v b="$bcpu1" -v t="$idle" 'BEGIN {printf "%.2f", 100 * (b - a) / t}')"
      cleanup
      ((keep)) || rm -rf "$run"
      continue
    fi
    head -c "$((image_kib * 1024))" /dev/urandom >"$run/image.bin"
    "$otactl" image add "$run/image.bin" --version 2.0.0 --hw bench-hw --chunk-size "$chunk" >/dev/null
    cpu0="$(cpu_s "$ctl_pid")"
    bcpu0="$(cpu_s "$broker_pid")"
    dep="$("$otactl" --json deploy 2.0.0 --group bench | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
    # Finished? One otactl call a second on the deployment list (counts, no device rows): the
    # wait must not take CPU from the processes measured (a python3 and the deployment with
    # its N rows five times a second took ~8% of this 2-core machine). wall_s is read from the
    # controller's event log afterwards, so the poll interval does not add to it.
    done_() {
      "$otactl" --json deployment list | grep -Eq "\"succeeded\": *$n([^0-9]|$)"
    }
    if ! wait_for "deployment $dep to finish on $n devices" 900 --every 1 done_; then
      "$otactl" deployment show "$dep" | head -5 >&2
      cleanup
      continue
    fi
    cpu1="$(cpu_s "$ctl_pid")"
    bcpu1="$(cpu_s "$broker_pid")"
    served="$(metric ota_bytes_served_total)"
    lost="$(metric ota_chunk_frames_lost_total)"
    bc_frames="$(metric ota_chunk_broadcast_frames_total)"
    echo "$n $mode run $r: broadcast frames $bc_frames delivered $(metric ota_chunk_broadcast_deliveries_total) chunks; unicast bytes $(metric ota_chunk_unicast_bytes_total); frames lost $lost; re-requests within the resend guard $(metric ota_chunk_resends_avoided_total)" >>"$work/details.log"
    # dl_s: from the deployment's creation until the last device had every chunk (its row
    # left downloading, in the controller's event log); the rest of wall_s is verifying,
    # rebooting into the image (a new TLS connection each) and confirming it.
    # wall_s: from the deployment's creation until the last device confirmed the image.
    read -r wall dl < <(python3 - "$run/controller.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
created = db.execute("select min(ts) from events where what = 'deployment_created'").fetchone()[0]
def since(detail_like):
    last = db.execute("select max(ts) from events where what = 'state' and detail like ?", (detail_like,)).fetchone()[0]
    return "%.2f" % ((last - created) / 1000.0) if created and last else "-"
print(since("% -> succeeded"), since("downloading -> verifying"))
PY
)
    mibs="$(awk -v n="$n" -v k="$image_kib" -v w="$wall" 'BEGIN {printf "%.1f", n * k / 1024 / w}')"
    dl_mibs="$(awk -v n="$n" -v k="$image_kib" -v w="$dl" 'BEGIN {if (w + 0 > 0) printf "%.1f", n * k / 1024 / w; else print 0}')"
    printf '%-8s %-9s %-9s %8s %8s %10s %6s %8s %8s %11s %8s %10s %12s %13s %9s %6s %12s\n' "$n" "$mode" "$image_kib" \
      "$wall" "$mibs" "$raw_mibs" \
      "$(awk -v a="$mibs" -v r="$raw_mibs" 'BEGIN {if (r + 0 > 0) printf "%.2f", a / r; else print "-"}')" \
      "$dl" "$(awk -v a="$dl_mibs" -v r="$raw_mibs" 'BEGIN {if (r + 0 > 0 && a + 0 > 0) printf "%.2f", a / r; else print "-"}')" \
      "$(awk -v s="$served" -v k="$image_kib" 'BEGIN {printf "%.2f", s / (k * 1024)}')" \
      "$(awk -v s="$served" -v n="$n" -v k="$image_kib" 'BEGIN {printf "%.2f", s / (n * k * 1024)}')" \
      "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {printf "%.1f", b - a}')" "$(hwm_mib "$ctl_pid")" \
      "$(awk -v a="$bcpu0" -v b="$bcpu1" 'BEGIN {printf "%.1f", b - a}')" "${bc_frames:-0}" "${lost:-0}" \
      "$raw_q1_mibs"
    cleanup
    ((keep)) || rm -rf "$run"
  done
done
