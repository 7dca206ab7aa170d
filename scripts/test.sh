#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (run as root the first time:
# it installs the packages it needs).
#  1. warnings-as-errors build (includes the -fno-exceptions -fno-rtti firmware build of
#     the agent core), unit + integration tests on a real mosquitto;
#  2. the same tests built with AddressSanitizer + UndefinedBehaviorSanitizer.
# Set OTA_SKIP_SANITIZE=1 to run only the first pass.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-deps.sh"
# The programs read OTA_<OPTION> variables (ota-controller --help shows them; otactl reads
# OTA_API, OTA_API_TOKEN, OTA_API_TOKEN_FILE): a shell that exported some, e.g. after the
# demo, must not change the processes the tests start. The test harness's own stay.
for v in $(compgen -e); do
  case "$v" in
    OTA_KEEP_TMP | OTA_BROKER_CONFIG_DIR | OTA_SKIP_SANITIZE) ;;
    OTA_*) unset "$v" ;;
  esac
done

echo "== build (-Werror) =="
# Line tables only (-g1): enough for a backtrace, and a fifth less compile time than -g.
"$root/scripts/build.sh" "$root/build-ci" -DOTA_WERROR=ON \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG"
echo "== tests =="
(cd "$root/build-ci" && ctest --output-on-failure --timeout 600 -j2)

if [[ "${OTA_SKIP_SANITIZE:-0}" != 1 ]]; then
  echo "== build (ASan + UBSan) =="
  "$root/scripts/build.sh" "$root/build-asan" -DOTA_WERROR=ON -DOTA_SANITIZE=ON -DOTA_BUILD_BENCH=OFF
  echo "== tests under ASan + UBSan =="
  (cd "$root/build-asan" && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
     ctest --output-on-failure --timeout 900 -j2)
fi
