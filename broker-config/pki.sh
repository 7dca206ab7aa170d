#!/usr/bin/env bash
# pki.sh — test/demo PKI for the OTA broker (openssl CLI only).
#
#   pki.sh init    DIR [--prefix P]                     CA, server, controller, release key, ACL
#   pki.sh device  DIR ID [--group G]...                one device certificate (+ group ACL)
#   pki.sh devices DIR COUNT NAME [--group G]...        NAME-001 .. NAME-COUNT
#
# Layout of DIR:
#   ca.key ca.crt                 EC P-256 CA (10 years)
#   server.key server.crt         CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1
#   controller.key controller.crt CN=ota-controller (clientAuth)
#   release.key release.pub       EC P-256 firmware-manifest signing pair (NOT a TLS key)
#   devices/ID.key devices/ID.crt CN=ID (clientAuth)
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
CA_DAYS=3650
LEAF_DAYS=825

usage() {
  cat >&2 <<'EOF'
usage: pki.sh init    DIR [--prefix P]                 (default prefix: ota/v1)
       pki.sh device  DIR ID [--group G]...
       pki.sh devices DIR COUNT NAME [--group G]...    creates NAME-001..NAME-COUNT
IDs, names and groups: 1-64 characters of [A-Za-z0-9._-].
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

  if [[ ! -f "$dir/acl" ]]; then
    [[ -f "$SCRIPT_DIR/acl.in" ]] || die "missing template $SCRIPT_DIR/acl.in"
    sed -e "s|@PREFIX@|$prefix|g" "$SCRIPT_DIR/acl.in" >"$dir/acl.tmp"
    chmod 644 "$dir/acl.tmp"
    mv -f "$dir/acl.tmp" "$dir/acl"
  fi
  printf '%s\n' "$prefix" >"$dir/prefix.tmp"
  chmod 644 "$dir/prefix.tmp"
  mv -f "$dir/prefix.tmp" "$dir/prefix"
  echo "$dir"
}

# acl_add_groups DIR ID G... — ensures "user ID" + "topic read P/grp/G/offer" lines exist.
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
      for g in "$@"; do printf 'topic read %s/grp/%s/offer\n' "$prefix" "$g"; done
    } >>"$acl"
    return 0
  fi
  for g in "$@"; do
    line="topic read $prefix/grp/$g/offer"
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

cmd_devices() {
  (($# >= 3)) || usage
  local dir="$1" count="$2" name="$3"; shift 3
  [[ "$count" =~ ^[0-9]+$ ]] && ((10#$count >= 1 && 10#$count <= 99999)) ||
    bad "invalid COUNT '$count': 1..99999"
  count=$((10#$count))
  local width=3
  ((count > 999)) && width=${#count}
  check_id "name" "$name"
  ((${#name} + 1 + width <= 64)) || bad "name '$name' too long for $count devices"
  parse_groups "$@"
  need_init "$dir"
  dir="$(cd "$dir" && pwd)"
  mkdir -p "$dir/devices"

  # Certificates in parallel (one openssl process per device, one job per CPU), then the
  # ACL serially (it is a single file).
  local jobs i id
  jobs="$(nproc 2>/dev/null || echo 2)"
  local -a ids=()
  for ((i = 1; i <= count; i++)); do
    printf -v id '%s-%0*d' "$name" "$width" "$i"
    ids+=("$id")
  done
  local running=0 failed=0
  for id in "${ids[@]}"; do
    if [[ -f "$dir/devices/$id.crt" && -f "$dir/devices/$id.key" ]]; then continue; fi
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
  if ((${#GROUPS_[@]})); then
    for id in "${ids[@]}"; do acl_add_groups "$dir" "$id" "${GROUPS_[@]}"; done
  fi
}

(($# >= 1)) || usage
cmd="$1"; shift
case "$cmd" in
  init) cmd_init "$@" ;;
  device) cmd_device "$@" ;;
  devices) cmd_devices "$@" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
