#!/usr/bin/env bash
# pki.sh — test/demo PKI for the OTA broker (openssl CLI only).
#
#   pki.sh init    DIR [--prefix P]                CA, server, controller, monitor, probe,
#                                                  release key, ACL, (empty) CRL
#   pki.sh device  DIR ID [--group G]...           one device certificate (+ group ACL)
#   pki.sh devices DIR COUNT NAME [--group G]...   NAME-001 .. NAME-COUNT (printf %03d:
#                                                  NAME-999, NAME-1000, ...); uses the
#                                                  ota-pki-devices tool when built
#   pki.sh monitor DIR NAME                        another read-only identity, NAME ota-monitor-*
#   pki.sh revoke  DIR ID                          revoke a device: CRL, ACL section removed,
#                                                  its files moved to revoked/
#   pki.sh crl     DIR                             re-sign the CRL (valid CRL_DAYS days)
#
# `init` is idempotent and also upgrades a directory made by an older pki.sh (adds what is
# missing: monitor/probe identities and their ACL sections, the CA database and the CRL).
# After `revoke` the broker must re-read the CRL (SIGHUP) and drop connections that are
# already open (restart): see broker-config/README.md, "Revoking a device".
#
# Layout of DIR (the directory and its subdirectories are 0700, keys 0600):
#   ca.key ca.crt                 EC P-256 CA (10 years)
#   server.key server.crt         CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1
#   controller.key controller.crt CN=ota-controller (clientAuth)
#   monitor.key monitor.crt       CN=ota-monitor (clientAuth): reads <prefix>/#, writes nothing
#   probe.key probe.crt           CN=ota-probe (clientAuth): no topic rights (liveness checks)
#   monitors/NAME.key .crt        CN=NAME, further read-only identities (`pki.sh monitor`)
#   release.key release.pub       EC P-256 firmware-manifest signing pair (NOT a TLS key)
#   devices/ID.key devices/ID.crt CN=ID (clientAuth)
#   revoked/ID.SERIAL.crt .key    revoked device certificates, kept for the record
#   crl.pem                       the CA's CRL (mosquitto crlfile), 0644
#   ca.cnf index.txt crlnumber    `openssl ca` configuration and database (CRL only)
#   acl                           mosquitto acl_file rendered from acl.in (+ group sections)
#   prefix                        the topic prefix the ACL was rendered with
#   openssl.cnf                   extension profiles used for signing
#
# Exit codes: 0 ok, 1 operational failure (openssl, missing init), 2 usage / bad input.
set -euo pipefail
umask 077

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ID_RE='^[A-Za-z0-9._-]{1,64}$'
CONTROLLER_CN="ota-controller"
MONITOR_CN="ota-monitor"     # read-only; further monitors are ota-monitor-<suffix>
PROBE_CN="ota-probe"         # no topic rights at all
CA_DAYS=3650
LEAF_DAYS=825
# A CRL past its nextUpdate makes OpenSSL refuse EVERY client certificate, so the CRL is
# valid as long as the CA; `pki.sh crl DIR` re-signs it (each revoke does too).
CRL_DAYS=3650

usage() {
  cat >&2 <<'EOF'
usage: pki.sh init    DIR [--prefix P]                 (default prefix: ota/v1)
       pki.sh device  DIR ID [--group G]...
       pki.sh devices DIR COUNT NAME [--group G]...    creates NAME-001..NAME-COUNT
       pki.sh monitor DIR NAME                         NAME: ota-monitor-<suffix>
       pki.sh revoke  DIR ID                           then SIGHUP + restart the broker
       pki.sh crl     DIR                              re-sign the CRL
IDs, names and groups: 1-64 characters of [A-Za-z0-9._-]. Device ids must not be
ota-controller, ota-probe, ota-monitor or ota-monitor-*.
EOF
  exit 2
}

die() { echo "pki.sh: $*" >&2; exit 1; }
bad() { echo "pki.sh: $*" >&2; exit 2; }

check_id() {  # check_id WHAT VALUE
  [[ "$2" =~ $ID_RE ]] || bad "invalid $1 '$2': must be 1-64 characters of [A-Za-z0-9._-]"
  [[ "$2" != "." && "$2" != ".." ]] || bad "invalid $1 '$2'"
}

check_prefix() {
  # Topic levels of the same charset, no wildcards, no leading/trailing/double slash.
  [[ "$1" =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ ]] && ((${#1} <= 64)) ||
    bad "invalid prefix '$1': levels of [A-Za-z0-9._-] separated by '/'"
}

rand_serial() {  # 127-bit positive serial from the kernel CSPRNG (bash 5.1+)
  printf '0x%08x%08x%08x%08x' $((SRANDOM & 0x7fffffff)) "$SRANDOM" "$SRANDOM" "$SRANDOM"
}

write_cnf() {  # extension profiles; -subj always overrides the placeholder DN
  local cnf="$1/openssl.cnf"
  [[ -f "$cnf" ]] && return 0
  cat >"$cnf" <<'EOF'
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = placeholder
[ v3_ca ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ v3_server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ v3_client ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  chmod 644 "$cnf"
}

# issue DIR NAME_PATH CN PROFILE — new P-256 key + CA-signed cert in ONE openssl process
# (OpenSSL 3 `req -x509 -CA`). Writes to temporaries first so a crash never leaves a key
# without its certificate.
issue() {
  local dir="$1" base="$2" cn="$3" profile="$4"
  openssl req -x509 -config "$dir/openssl.cnf" -extensions "$profile" \
    -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -keyout "$base.key.tmp" \
    -subj "/CN=$cn" -days "$LEAF_DAYS" -sha256 -set_serial "$(rand_serial)" \
    -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -out "$base.crt.tmp" 2>"$base.err" ||
    { cat "$base.err" >&2; rm -f "$base.err" "$base.key.tmp" "$base.crt.tmp"; return 1; }
  rm -f "$base.err"
  chmod 600 "$base.key.tmp"
  chmod 644 "$base.crt.tmp"
  mv -f "$base.key.tmp" "$base.key"
  mv -f "$base.crt.tmp" "$base.crt"
}

need_init() {
  [[ -f "$1/ca.crt" && -f "$1/ca.key" && -f "$1/prefix" && -f "$1/acl" ]] ||
    die "$1 is not an initialised PKI directory (run: pki.sh init $1)"
}

cmd_init() {
  (($# >= 1)) || usage
  local dir="$1" prefix="ota/v1" prefix_given=0
  shift
  while (($#)); do
    case "$1" in
      --prefix) (($# >= 2)) || usage; prefix="$2"; prefix_given=1; shift 2 ;;
      *) usage ;;
    esac
  done
  check_prefix "$prefix"
  mkdir -p "$dir/devices"
  dir="$(cd "$dir" && pwd)"

  if [[ -f "$dir/prefix" ]]; then
    local old; old="$(cat "$dir/prefix")"
    if ((prefix_given)) && [[ "$old" != "$prefix" ]]; then
      bad "$dir already initialised with prefix '$old' (asked for '$prefix')"
    fi
    prefix="$old"
  fi
  write_cnf "$dir"

  if [[ ! -f "$dir/ca.crt" ]]; then
    openssl req -x509 -config "$dir/openssl.cnf" -extensions v3_ca \
      -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -keyout "$dir/ca.key.tmp" \
      -subj "/CN=OTA Test CA" -days "$CA_DAYS" -sha256 -set_serial "$(rand_serial)" \
      -out "$dir/ca.crt.tmp" 2>"$dir/ca.err" || { cat "$dir/ca.err" >&2; die "CA creation failed"; }
    rm -f "$dir/ca.err"
    chmod 600 "$dir/ca.key.tmp"; chmod 644 "$dir/ca.crt.tmp"
    mv -f "$dir/ca.key.tmp" "$dir/ca.key"
    mv -f "$dir/ca.crt.tmp" "$dir/ca.crt"
  fi
  [[ -f "$dir/ca.key" ]] || die "$dir/ca.crt exists but $dir/ca.key is missing"

  [[ -f "$dir/server.crt" && -f "$dir/server.key" ]] ||
    issue "$dir" "$dir/server" localhost v3_server || die "server certificate failed"
  [[ -f "$dir/controller.crt" && -f "$dir/controller.key" ]] ||
    issue "$dir" "$dir/controller" "$CONTROLLER_CN" v3_client || die "controller certificate failed"

  if [[ ! -f "$dir/release.key" || ! -f "$dir/release.pub" ]]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
      -pkeyopt ec_param_enc:named_curve -out "$dir/release.key.tmp" || die "release key failed"
    openssl pkey -in "$dir/release.key.tmp" -pubout -out "$dir/release.pub.tmp" ||
      die "release public key failed"
    chmod 600 "$dir/release.key.tmp"; chmod 644 "$dir/release.pub.tmp"
    mv -f "$dir/release.key.tmp" "$dir/release.key"
    mv -f "$dir/release.pub.tmp" "$dir/release.pub"
  fi

  [[ -f "$dir/monitor.crt" && -f "$dir/monitor.key" ]] ||
    issue "$dir" "$dir/monitor" "$MONITOR_CN" v3_client || die "monitor certificate failed"
  [[ -f "$dir/probe.crt" && -f "$dir/probe.key" ]] ||
    issue "$dir" "$dir/probe" "$PROBE_CN" v3_client || die "probe certificate failed"

  if [[ ! -f "$dir/acl" ]]; then
    [[ -f "$SCRIPT_DIR/acl.in" ]] || die "missing template $SCRIPT_DIR/acl.in"
    sed -e "s|@PREFIX@|$prefix|g" "$SCRIPT_DIR/acl.in" >"$dir/acl.tmp"
    chmod 644 "$dir/acl.tmp"
    mv -f "$dir/acl.tmp" "$dir/acl"
  fi
  # An ACL rendered by an older pki.sh lacks these sections.
  grep -qxF "user $MONITOR_CN" "$dir/acl" || acl_append_monitor "$dir/acl" "$MONITOR_CN" "$prefix"
  grep -qxF "user $PROBE_CN" "$dir/acl" || acl_append_probe "$dir/acl" "$prefix"
  printf '%s\n' "$prefix" >"$dir/prefix.tmp"
  chmod 644 "$dir/prefix.tmp"
  mv -f "$dir/prefix.tmp" "$dir/prefix"

  write_ca_db "$dir"
  [[ -f "$dir/crl.pem" ]] || gen_crl "$dir" || die "CRL creation failed"
  echo "$dir"
}

# acl_append_monitor ACL NAME PREFIX — a read-only section. mosquitto checks a user's
# "deny" lines first, then its grants, then the pattern lines; the deny closes the one
# write the patterns would grant any user (<prefix>/dev/<own name>/up/#).
acl_append_monitor() {
  printf '\n# monitor %s: read-only\nuser %s\ntopic deny %s/dev/%s/#\ntopic read %s/#\n' \
    "$2" "$2" "$3" "$2" "$3" >>"$1"
}
acl_append_probe() {  # acl_append_probe ACL PREFIX — no rights at all
  printf '\n# probe %s: connects, nothing else\nuser %s\ntopic deny %s/#\n' \
    "$PROBE_CN" "$PROBE_CN" "$2" >>"$1"
}

# The `openssl ca` configuration and database, used only to keep the revocation list
# (certificates are issued with `openssl req -x509 -CA`, see issue()). Paths are relative:
# openssl runs in DIR.
write_ca_db() {
  local dir="$1"
  if [[ ! -f "$dir/ca.cnf" ]]; then
    {
      printf '[ ca ]\ndefault_ca = ota_ca\n[ ota_ca ]\n'
      printf 'database = index.txt\ncrlnumber = crlnumber\n'
      printf 'certificate = ca.crt\nprivate_key = ca.key\ndefault_md = sha256\n'
      printf 'default_crl_days = %s\nunique_subject = no\ncrl_extensions = crl_ext\n' "$CRL_DAYS"
      printf '[ crl_ext ]\nauthorityKeyIdentifier = keyid:always\n'
    } >"$dir/ca.cnf.tmp"
    chmod 644 "$dir/ca.cnf.tmp"
    mv -f "$dir/ca.cnf.tmp" "$dir/ca.cnf"
  fi
  [[ -f "$dir/index.txt" ]] || : >"$dir/index.txt"
  [[ -f "$dir/index.txt.attr" ]] || echo "unique_subject = no" >"$dir/index.txt.attr"
  [[ -f "$dir/crlnumber" ]] || echo 01 >"$dir/crlnumber"
}

# gen_crl DIR — signs DIR/crl.pem from the database; replaced atomically, mode 0644 (the
# broker reads it; a CRL is public).
gen_crl() {
  local dir="$1"
  (cd "$dir" && openssl ca -config ca.cnf -gencrl -out crl.pem.tmp) >"$dir/crl.err" 2>&1 ||
    { cat "$dir/crl.err" >&2; rm -f "$dir/crl.err" "$dir/crl.pem.tmp"; return 1; }
  rm -f "$dir/crl.err"
  chmod 644 "$dir/crl.pem.tmp"
  mv -f "$dir/crl.pem.tmp" "$dir/crl.pem"
}

# The ACL lines of one group membership: the group's offers and its broadcast image topics
# (chunk frames of images downloaded by members, PROTOCOL.md 17: images are signed, not
# secret, and a device reads only the groups it belongs to).
group_lines() {  # group_lines PREFIX G
  printf 'topic read %s/grp/%s/offer\ntopic read %s/grp/%s/img/+/chunk\n' "$1" "$2" "$1" "$2"
}

# acl_add_groups DIR ID G... — ensures "user ID" + the group_lines of every G exist.
# Idempotent: an existing section only gets the group lines it lacks (inserted right after
# its "user" line, so they never land under another user's section).
acl_add_groups() {
  local dir="$1" id="$2"; shift 2
  (($#)) || return 0
  local prefix acl="$dir/acl" g line
  prefix="$(cat "$dir/prefix")"
  if ! grep -qxF "user $id" "$acl"; then
    {
      printf '\n# device %s: group offers\nuser %s\n' "$id" "$id"
      for g in "$@"; do group_lines "$prefix" "$g"; done
    } >>"$acl"
    return 0
  fi
  for g in "$@"; do
    while IFS= read -r line; do
      # Already present inside this user's section?
      if awk -v u="user $id" -v l="$line" '
          $0 == u { in_s = 1; next }
          /^user / { in_s = 0 }
          in_s && $0 == l { found = 1 }
          END { exit found ? 0 : 1 }' "$acl"; then
        continue
      fi
      awk -v u="user $id" -v l="$line" '{ print } $0 == u { print l }' "$acl" >"$acl.tmp"
      chmod 644 "$acl.tmp"
      mv -f "$acl.tmp" "$acl"
    done < <(group_lines "$prefix" "$g")
  done
}

parse_groups() {  # fills GROUPS from "--group G" pairs
  GROUPS_=()
  while (($#)); do
    case "$1" in
      --group) (($# >= 2)) || usage; check_id group "$2"; GROUPS_+=("$2"); shift 2 ;;
      *) usage ;;
    esac
  done
}

check_device_id() {
  check_id "device id" "$1"
  [[ "$1" != "$CONTROLLER_CN" ]] || bad "device id '$1' is reserved for the controller"
  [[ "$1" != "$PROBE_CN" && "$1" != "$MONITOR_CN" && "$1" != "$MONITOR_CN"-* ]] ||
    bad "device id '$1' is reserved (monitoring identities)"
}

cmd_device() {
  (($# >= 2)) || usage
  local dir="$1" id="$2"; shift 2
  check_device_id "$id"
  parse_groups "$@"
  need_init "$dir"
  dir="$(cd "$dir" && pwd)"
  mkdir -p "$dir/devices"
  if [[ ! -f "$dir/devices/$id.crt" || ! -f "$dir/devices/$id.key" ]]; then
    issue "$dir" "$dir/devices/$id" "$id" v3_client || die "certificate for '$id' failed"
  fi
  acl_add_groups "$dir" "$id" "${GROUPS_[@]+"${GROUPS_[@]}"}"
}

# The certificate tool built from device-agent/sim (ota-pki-devices: every certificate in one
# process, 10,000 in seconds): $OTA_PKI_DEVICES, else one on PATH, else the one in this
# checkout's build/. Empty when there is none: then one openssl process per certificate.
pki_devices_tool() {
  local t
  for t in "${OTA_PKI_DEVICES:-}" "$(command -v ota-pki-devices 2>/dev/null || true)" \
      "$SCRIPT_DIR/../build/device-agent/sim/ota-pki-devices"; do
    if [[ -n "$t" && -x "$t" ]]; then echo "$t"; return 0; fi
  done
}

# acl_add_groups_many DIR G... < ids — acl_add_groups for many devices: the sections of
# devices that have none are appended in one write (in the order given, as acl_add_groups
# would), devices whose section lacks a group line go through acl_add_groups.
acl_add_groups_many() {
  local dir="$1"; shift
  (($#)) || { cat >/dev/null; return 0; }
  local acl="$dir/acl" prefix id
  prefix="$(cat "$dir/prefix")"
  local -a partial=()
  awk -v prefix="$prefix" -v groups="$*" -v blocks="$acl.new" -v partial="$acl.partial" '
    BEGIN { n = split(groups, g, " "); printf "" > blocks; printf "" > partial }
    FNR == NR {  # the ACL: which users have which lines
      if ($0 ~ /^user /) { user = substr($0, 6); has_user[user] = 1; next }
      if (user != "") has_line[user, $0] = 1
      next
    }
    $0 != "" && !($0 in has_user) {
      printf "\n# device %s: group offers\nuser %s\n", $0, $0 > blocks
      for (i = 1; i <= n; i++)
        printf "topic read %s/grp/%s/offer\ntopic read %s/grp/%s/img/+/chunk\n", prefix, g[i], prefix, g[i] > blocks
      has_user[$0] = 1
      next
    }
    $0 != "" {
      for (i = 1; i <= n; i++)
        if (!(($0, "topic read " prefix "/grp/" g[i] "/offer") in has_line) ||
            !(($0, "topic read " prefix "/grp/" g[i] "/img/+/chunk") in has_line)) { print $0 > partial; break }
    }' "$acl" - || { rm -f "$acl.new" "$acl.partial"; return 1; }
  if [[ -s "$acl.new" ]]; then
    cat "$acl" "$acl.new" >"$acl.tmp"
    chmod 644 "$acl.tmp"
    mv -f "$acl.tmp" "$acl"
  fi
  mapfile -t partial <"$acl.partial"
  rm -f "$acl.new" "$acl.partial"
  for id in "${partial[@]+"${partial[@]}"}"; do acl_add_groups "$dir" "$id" "$@"; done
}

# Device ids are NAME-%03d at any count (NAME-001..NAME-999, NAME-1000..), the rule
# ota-devsim --id-prefix NAME uses to find them.
cmd_devices() {
  (($# >= 3)) || usage
  local dir="$1" count="$2" name="$3"; shift 3
  [[ "$count" =~ ^[0-9]+$ ]] && ((10#$count >= 1 && 10#$count <= 99999)) ||
    bad "invalid COUNT '$count': 1..99999"
  count=$((10#$count))
  local width=3
  ((${#count} > width)) && width=${#count}
  check_id "name" "$name"
  ((${#name} + 1 + width <= 64)) || bad "name '$name' too long for $count devices"
  parse_groups "$@"
  need_init "$dir"
  dir="$(cd "$dir" && pwd)"
  mkdir -p "$dir/devices"

  local i id
  local -a ids=() missing=()
  for ((i = 1; i <= count; i++)); do
    printf -v id '%s-%03d' "$name" "$i"
    ids+=("$id")
    [[ -f "$dir/devices/$id.crt" && -f "$dir/devices/$id.key" ]] || missing+=("$id")
  done
  local tool
  tool="$(pki_devices_tool)"
  if ((${#missing[@]})) && [[ -n "$tool" ]]; then
    printf '%s\n' "${missing[@]}" | "$tool" --dir "$dir" --days "$LEAF_DAYS" --profile v3_client ||
      die "some device certificates failed"
  elif ((${#missing[@]})); then
    # One openssl process per device, one job per CPU.
    local jobs running=0 failed=0
    jobs="$(nproc 2>/dev/null || echo 2)"
    for id in "${missing[@]}"; do
      issue "$dir" "$dir/devices/$id" "$id" v3_client &
      running=$((running + 1))
      if ((running >= jobs)); then
        wait -n || failed=1
        running=$((running - 1))
      fi
    done
    while ((running > 0)); do
      wait -n || failed=1
      running=$((running - 1))
    done
    ((failed == 0)) || die "some device certificates failed"
  fi
  if ((${#GROUPS_[@]})); then
    printf '%s\n' "${ids[@]}" | acl_add_groups_many "$dir" "${GROUPS_[@]}" || die "ACL update failed"
  fi
}

cmd_monitor() {
  (($# == 2)) || usage
  local dir="$1" name="$2"
  check_id "monitor name" "$name"
  [[ "$name" == "$MONITOR_CN"-* ]] ||
    bad "monitor name '$name' must start with '$MONITOR_CN-' ($MONITOR_CN itself comes with init)"
  need_init "$dir"
  dir="$(cd "$dir" && pwd)"
  mkdir -p "$dir/monitors"
  if [[ ! -f "$dir/monitors/$name.crt" || ! -f "$dir/monitors/$name.key" ]]; then
    issue "$dir" "$dir/monitors/$name" "$name" v3_client || die "certificate for '$name' failed"
  fi
  grep -qxF "user $name" "$dir/acl" || acl_append_monitor "$dir/acl" "$name" "$(cat "$dir/prefix")"
}

# acl_remove_user DIR ID — drops the "user ID" section (its lines up to the next section,
# comment or blank line) and the "# device ID: ..." comment pki.sh wrote above it. Atomic
# rename, so the controller (--acl-file, re-read when it changes) and the broker never read
# half a file.
acl_remove_user() {
  local dir="$1" id="$2" acl="$1/acl"
  grep -qxF "user $id" "$acl" || return 0
  awk -v u="user $id" -v c="# device $id: group offers" '
    { line[NR] = $0 }
    END {
      skip = 0; n = 0
      for (i = 1; i <= NR; i++) {
        if (line[i] == u) { skip = 1; continue }
        if (skip && (line[i] ~ /^user / || line[i] ~ /^#/ || line[i] ~ /^[ \t]*$/)) skip = 0
        if (skip) continue
        # the comment (and the blank line before it) that introduced the section
        if (line[i] == c && (i + 1) in line && line[i + 1] == u) {
          if (n > 0 && out[n] == "") n--
          continue
        }
        out[++n] = line[i]
      }
      for (i = 1; i <= n; i++) print out[i]
    }' "$acl" >"$acl.tmp"
  chmod 644 "$acl.tmp"
  mv -f "$acl.tmp" "$acl"
}

cmd_revoke() {
  (($# == 2)) || usage
  local dir="$1" id="$2"
  check_device_id "$id"
  need_init "$dir"
  dir="$(cd "$dir" && pwd)"
  write_ca_db "$dir"
  local crt="$dir/devices/$id.crt" key="$dir/devices/$id.key" serial
  if [[ -f "$crt" ]]; then
    serial="$(openssl x509 -in "$crt" -noout -serial)" || die "cannot read $crt"
    serial="${serial#serial=}"
    # Already revoked in the database (an earlier run stopped half way): carry on.
    if ! awk -F'\t' -v s="$serial" '$1 == "R" && toupper($4) == toupper(s) { f = 1 }
                                 END { exit f ? 0 : 1 }' "$dir/index.txt"; then
      (cd "$dir" && openssl ca -config ca.cnf -revoke "devices/$id.crt") >"$dir/revoke.err" 2>&1 ||
        { cat "$dir/revoke.err" >&2; rm -f "$dir/revoke.err"; die "revoking '$id' failed"; }
      rm -f "$dir/revoke.err"
    fi
    gen_crl "$dir" || die "CRL generation failed ('$id' is revoked in index.txt; run: pki.sh crl $dir)"
    acl_remove_user "$dir" "$id"
    # Moved aside, so that `pki.sh device DIR ID` issues a new certificate (new serial) to
    # re-enrol the device once it can be trusted again.
    mkdir -p "$dir/revoked"
    if [[ -f "$key" ]]; then mv -f "$key" "$dir/revoked/$id.$serial.key"; fi
    mv -f "$crt" "$dir/revoked/$id.$serial.crt"
    echo "revoked $id (serial $serial): reload the broker (SIGHUP) to refuse new connections," \
      "restart it to drop an open one"
  elif awk -F'\t' -v n="/CN=$id" '$1 == "R" && $6 == n { f = 1 } END { exit f ? 0 : 1 }' \
      "$dir/index.txt"; then
    gen_crl "$dir" || die "CRL generation failed"
    acl_remove_user "$dir" "$id"
    echo "$id has no current certificate; already revoked"
  else
    die "no certificate for device '$id' in $dir/devices"
  fi
}

cmd_crl() {
  (($# == 1)) || usage
  local dir="$1"
  need_init "$dir"
  dir="$(cd "$dir" && pwd)"
  write_ca_db "$dir"
  gen_crl "$dir" || die "CRL generation failed"
}

(($# >= 1)) || usage
cmd="$1"; shift
case "$cmd" in
  init) cmd_init "$@" ;;
  device) cmd_device "$@" ;;
  devices) cmd_devices "$@" ;;
  monitor) cmd_monitor "$@" ;;
  revoke) cmd_revoke "$@" ;;
  crl) cmd_crl "$@" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
