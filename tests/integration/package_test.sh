#!/usr/bin/env bash
# package_test.sh BUILD_DIR: the Debian package and `cmake --install` as an operator gets them.
#  1. cpack -G DEB in a temp dir; control fields (Depends on the runtime libraries,
#     Recommends mosquitto, conffiles, maintainer scripts) and the file list: every program,
#     both systemd units, the broker configuration, the /etc/ota config files, the monitoring
#     files, the docs;
#  2. dpkg -x: every unpacked program finds its libraries (ldd), `--help` and `--version`
#     exit 0; the shipped /etc/ota/controller.toml and agent.toml are accepted (--print-config);
#  3. the units: hardening settings present, `systemd-analyze verify` silent (ExecStart paths
#     rewritten to the unpacked tree) and `systemd-analyze security` exposure <= 2.0;
#  4. the broker drop-in: the unpacked pki.sh and install-dropin.sh make a PKI and
#     conf.d/ota.conf, a real mosquitto runs it under a Debian-style main mosquitto.conf, a
#     client with a certificate of the CA connects, one without a certificate is refused;
#  5. DESTDIR=... cmake --install --prefix /opt/ota: units point at /opt/ota/bin and
#     /opt/ota/etc/ota, and a second install keeps a changed config file.
# Every process it starts is stopped by its pid. OTA_KEEP_TMP=1 keeps the temp dir.
set -euo pipefail
build="$(cd "$1" && pwd)"
tmp="$(mktemp -d /tmp/ota-package-XXXXXX)"
mosq_pid=""
cleanup() {
  if [[ -n "$mosq_pid" ]]; then
    kill "$mosq_pid" 2>/dev/null || true
    wait "$mosq_pid" 2>/dev/null || true
  fi
  if [[ -n "${OTA_KEEP_TMP:-}" ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
fail() { echo "package_test: FAIL: $*" >&2; exit 1; }
step() { echo "== $* (${SECONDS}s)"; }
# wait_for SECONDS COMMAND...: polls COMMAND until it succeeds or the deadline passes.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

step "cpack -G DEB"
cpack -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/pkg" >"$tmp/cpack.log" 2>&1 ||
  { cat "$tmp/cpack.log" >&2; fail "cpack failed"; }
debs=("$tmp"/pkg/*.deb)
((${#debs[@]} == 1)) && [[ -f "${debs[0]}" ]] || fail "expected exactly one .deb in $tmp/pkg"
deb="${debs[0]}"
echo "$(basename "$deb"): $(stat -c %s "$deb") bytes"

step "control fields and maintainer scripts"
[[ "$(dpkg-deb -f "$deb" Package)" == ota-orchestrator ]] || fail "package name"
version="$(dpkg-deb -f "$deb" Version)"
depends="$(dpkg-deb -f "$deb" Depends)"
echo "Depends: $depends"
for lib in libmosquitto1 libssl3 libsqlite3-0 libdeflate0 libc6 libstdc++6; do
  tr ',' '\n' <<<"$depends" | sed -e 's/^ *//' -e 's/ .*//' | grep -qxF "$lib" || fail "Depends lacks $lib"
done
grep -qw mosquitto <<<"$(dpkg-deb -f "$deb" Recommends)" || fail "mosquitto is not recommended"
dpkg-deb -e "$deb" "$tmp/control"
for f in /etc/ota/controller.toml /etc/ota/controller.env /etc/ota/agent.toml /etc/ota/agent.env; do
  grep -qxF "$f" "$tmp/control/conffiles" || fail "$f is not a conffile"
done
for s in postinst prerm postrm; do
  [[ -x "$tmp/control/$s" ]] || fail "$s missing or not executable"
  sh -n "$tmp/control/$s" || fail "$s: syntax error"
done
grep -q "useradd --system" "$tmp/control/postinst" || fail "postinst does not create the ota user"

step "file list (dpkg -c)"
dpkg -c "$deb" | awk '{print $6}' | sed -e 's|^\./|/|' >"$tmp/files"
expected=(
  /usr/bin/ota-controller /usr/bin/otactl /usr/bin/ota-agent /usr/bin/ota-devsim
  /usr/bin/ota-conformance /usr/bin/ota-pki-devices
  /usr/lib/systemd/system/ota-controller.service /usr/lib/systemd/system/ota-agent.service
  /usr/share/ota/broker-config/mosquitto.conf.in /usr/share/ota/broker-config/acl.in
  /usr/share/ota/broker-config/pki.sh /usr/share/ota/broker-config/run-broker.sh
  /usr/share/ota/broker-config/install-dropin.sh /usr/share/ota/broker-config/README.md
  /etc/ota/controller.toml /etc/ota/controller.env /etc/ota/agent.toml /etc/ota/agent.env
  /usr/share/ota/monitoring/ota-alerts.yml /usr/share/ota/monitoring/ota-alerts.test.yml
  /usr/share/ota/monitoring/grafana-dashboard.json
  /usr/share/ota/web/index.html /usr/share/ota/web/style.css /usr/share/ota/web/js/app.js
  /usr/share/doc/ota-orchestrator/operations.md /usr/share/doc/ota-orchestrator/README.md
)
for f in "${expected[@]}"; do grep -qxF "$f" "$tmp/files" || fail "$f is not in the package"; done
if grep -vE '^/(usr|etc/ota)(/|$)|^/etc/$|^/$' "$tmp/files"; then fail "files outside /usr and /etc/ota (above)"; fi

step "unpacked programs"
root="$tmp/root"
dpkg -x "$deb" "$root"
for p in ota-controller otactl ota-agent ota-devsim ota-conformance; do
  bin="$root/usr/bin/$p"
  if ldd "$bin" | grep "not found"; then fail "$p: libraries not found (above)"; fi
  "$bin" --help >"$tmp/help.out" 2>&1 || { cat "$tmp/help.out" >&2; fail "$p --help exit $?"; }
  v="$("$bin" --version)" || fail "$p --version exit $?"
  [[ "$v" == "$version" ]] || fail "$p --version printed '$v', the package is $version"
done
# Captured first: with pipefail, grep -q leaving early would fail the pipe on SIGPIPE.
controller_help=$("$root/usr/bin/ota-controller" --help)
grep -q "Env:OTA_MIN_FREE_MB" <<<"$controller_help" || fail "--help does not show the environment variables"

step "shipped config files are accepted"
"$root/usr/bin/ota-controller" --config "$root/etc/ota/controller.toml" --print-config >"$tmp/controller.eff" ||
  fail "ota-controller refuses the shipped controller.toml"
for kv in 'db="/var/lib/ota/controller.db"' 'store="/var/lib/ota/images"' 'acl-file="/etc/mosquitto/ota/acl"' \
          'signing-key="/etc/ota/pki/release.key"' 'http="127.0.0.1:8080"'; do
  grep -qxF "$kv" "$tmp/controller.eff" || fail "effective controller config lacks $kv"
done
# ota-agent checks that its certificate files exist: point those at temp files by environment.
touch "$tmp/ca.crt" "$tmp/dev.crt" "$tmp/dev.key" "$tmp/release.pub"
OTA_CA="$tmp/ca.crt" OTA_CERT="$tmp/dev.crt" OTA_KEY="$tmp/dev.key" OTA_TRUSTED_KEY="$tmp/release.pub" \
  "$root/usr/bin/ota-agent" --config "$root/etc/ota/agent.toml" --print-config >"$tmp/agent.eff" ||
  fail "ota-agent refuses the shipped agent.toml"
grep -qxF 'data="/var/lib/ota-agent"' "$tmp/agent.eff" || fail "agent data dir"
grep -qxF "ca=\"$tmp/ca.crt\"" "$tmp/agent.eff" || fail "agent: OTA_CA did not override the config file"

step "systemd units"
unit="$root/usr/lib/systemd/system/ota-controller.service"
for line in 'User=ota' 'Restart=on-failure' 'NoNewPrivileges=yes' 'ProtectSystem=strict' 'ProtectHome=yes' \
            'PrivateTmp=yes' 'StateDirectory=ota' 'CapabilityBoundingSet=' \
            'ExecStart=/usr/bin/ota-controller --config /etc/ota/controller.toml' \
            'EnvironmentFile=-/etc/ota/controller.env'; do
  grep -qxF "$line" "$unit" || fail "ota-controller.service lacks '$line'"
done
grep -qxF 'ExecStart=/usr/bin/ota-agent --config /etc/ota/agent.toml' "$root/usr/lib/systemd/system/ota-agent.service" ||
  fail "ota-agent.service ExecStart"
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$tmp/units"
  for u in ota-controller.service ota-agent.service; do
    sed -e "s|/usr/bin/|$root/usr/bin/|g" -e "s|/etc/ota/|$root/etc/ota/|g" \
      "$root/usr/lib/systemd/system/$u" >"$tmp/units/$u"
  done
  (cd "$tmp/units" && systemd-analyze verify --man=no ./ota-controller.service ./ota-agent.service) \
    >"$tmp/verify.out" 2>&1 || { cat "$tmp/verify.out" >&2; fail "systemd-analyze verify failed"; }
  # verify exits 0 on unknown keys and bad values (it ignores them): any output is a failure.
  [[ ! -s "$tmp/verify.out" ]] || { cat "$tmp/verify.out" >&2; fail "systemd-analyze verify complained"; }
  for u in ota-controller.service ota-agent.service; do
    (cd "$tmp/units" && systemd-analyze security --offline=yes --threshold=20 "./$u") >"$tmp/security.out" 2>&1 ||
      { tail -25 "$tmp/security.out" >&2; fail "$u: systemd-analyze security exposure above 2.0"; }
    tail -1 "$tmp/security.out"
  done
else
  echo "systemd-analyze not installed: units not verified"
fi

step "broker drop-in with a Debian-style mosquitto.conf"
share="$root/usr/share/ota/broker-config"
"$share/pki.sh" init "$tmp/pki" >/dev/null
# Many device certificates come from the packaged ota-pki-devices (pki.sh finds it on PATH).
OTA_PKI_DEVICES="$root/usr/bin/ota-pki-devices" "$share/pki.sh" devices "$tmp/pki" 3 pkgdev --group g1 >/dev/null ||
  fail "pki.sh devices with the packaged ota-pki-devices"
for i in 001 002 003; do
  openssl verify -CAfile "$tmp/pki/ca.crt" "$tmp/pki/devices/pkgdev-$i.crt" >/dev/null ||
    fail "pkgdev-$i.crt does not verify against the CA"
done
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
etc="$tmp/etc-mosquitto"
"$share/install-dropin.sh" "$tmp/pki" --port "$port" --listen 127.0.0.1 --dest "$etc/ota" --conf-dir "$etc/conf.d"
grep -qx "listener $port 127.0.0.1" "$etc/conf.d/ota.conf" || fail "drop-in listener line"
grep -qx "acl_file $etc/ota/acl" "$etc/conf.d/ota.conf" || fail "drop-in acl_file"
if grep -E '^(persistence_location|log_dest|user) ' "$etc/conf.d/ota.conf"; then fail "drop-in repeats a main-file setting"; fi
mkdir -p "$tmp/mosq-data" "$tmp/mosq-log"
if [[ $(id -u) -eq 0 ]] && getent passwd mosquitto >/dev/null; then
  # As root mosquitto drops to the mosquitto user, as on a real system.
  chmod 0755 "$tmp"
  chown mosquitto: "$tmp/mosq-data" "$tmp/mosq-log"
  [[ "$(stat -c %U "$etc/ota/server.key")" == mosquitto ]] || fail "server.key not owned by mosquitto"
fi
[[ "$(stat -c %a "$etc/ota/server.key")" == 600 ]] || fail "server.key mode"
cat >"$tmp/mosquitto.conf" <<CONF
# like Debian's /etc/mosquitto/mosquitto.conf
persistence true
persistence_location $tmp/mosq-data/
log_dest file $tmp/mosq-log/mosquitto.log
include_dir $etc/conf.d
CONF
mosquitto -c "$tmp/mosquitto.conf" >"$tmp/mosquitto.out" 2>&1 &
mosq_pid=$!
pub() {
  mosquitto_pub -h 127.0.0.1 -p "$port" --cafile "$tmp/pki/ca.crt" "$@" -t ota/v1/package-test -m x -q 1
}
wait_for 10 pub --cert "$tmp/pki/monitor.crt" --key "$tmp/pki/monitor.key" ||
  { cat "$tmp/mosquitto.out" "$tmp/mosq-log/mosquitto.log" >&2 2>/dev/null; fail "no TLS connection to the drop-in broker"; }
if pub >/dev/null 2>&1; then fail "the drop-in broker accepted a client without a certificate"; fi
kill "$mosq_pid"
wait "$mosq_pid" || true
mosq_pid=""

step "cmake --install --prefix /opt/ota (DESTDIR)"
DESTDIR="$tmp/di" cmake --install "$build" --prefix /opt/ota >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; fail "cmake --install"; }
for p in ota-controller otactl ota-agent ota-devsim ota-conformance; do
  [[ -x "$tmp/di/opt/ota/bin/$p" ]] || fail "cmake --install: $p missing"
done
grep -qxF 'ExecStart=/opt/ota/bin/ota-controller --config /opt/ota/etc/ota/controller.toml' \
  "$tmp/di/opt/ota/lib/systemd/system/ota-controller.service" || fail "installed unit paths"
[[ -f "$tmp/di/opt/ota/share/ota/broker-config/pki.sh" ]] || fail "broker config not installed"
[[ -f "$tmp/di/opt/ota/share/ota/web/index.html" ]] || fail "web dashboard not installed"
echo "# changed by the operator" >>"$tmp/di/opt/ota/etc/ota/controller.toml"
DESTDIR="$tmp/di" cmake --install "$build" --prefix /opt/ota >"$tmp/install2.log" 2>&1 || fail "second cmake --install"
grep -q "changed by the operator" "$tmp/di/opt/ota/etc/ota/controller.toml" || fail "a reinstall overwrote the config file"

step "package test passed"
