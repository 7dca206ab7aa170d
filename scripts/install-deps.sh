#!/usr/bin/env bash
# Installs the Debian 12 packages the build, the demo and the tests need (as root).
# Skips apt-get entirely when everything is already installed.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git openssl
  mosquitto mosquitto-clients libmosquitto-dev libmosquittopp-dev
  libssl-dev nlohmann-json3-dev libsqlite3-dev sqlite3
  libcli11-dev libcpp-httplib-dev libdeflate-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  python3 python3-jsonschema
  gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm
  file prometheus
  chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # mosquitto and prometheus ship daemons that Debian starts on installation (a broker on
  # :1883, a Prometheus server on :9090). The tests start their own on loopback and only need
  # the programs (mosquitto, promtool), so keep the packages' services from starting here.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The OpenAPI validator the tests run (service.openapi_validate): Node.js from Debian unless a
# node and npm are installed already, and @apidevtools/swagger-parser at the versions
# tests/openapi/package-lock.json pins, into .cache/openapi/ of this tree (npm's registry).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: node and npm are missing (run as root to install nodejs and npm)" >&2
    exit 1
  fi
  echo "install-deps: installing nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
cache="$root/.cache/openapi"
if ! cmp -s "$root/tests/openapi/package-lock.json" "$cache/package-lock.json" ||
   [[ ! -f $cache/node_modules/@apidevtools/swagger-parser/package.json ]]; then
  echo "install-deps: installing the OpenAPI validator into $cache"
  mkdir -p "$cache"
  cp "$root/tests/openapi/package.json" "$root/tests/openapi/package-lock.json" "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The browser tests of the web dashboard (web.*, tests/web/dashboard_test.js): playwright-core
# at the version tests/web/package-lock.json pins, into .cache/web/ (it drives the chromium
# package above; it downloads no browser of its own).
web_cache="$root/.cache/web"
if ! cmp -s "$root/tests/web/package-lock.json" "$web_cache/package-lock.json" ||
   [[ ! -f $web_cache/node_modules/playwright-core/package.json ]]; then
  echo "install-deps: installing playwright-core into $web_cache"
  mkdir -p "$web_cache"
  cp "$root/tests/web/package.json" "$root/tests/web/package-lock.json" "$web_cache/"
  (cd "$web_cache" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
