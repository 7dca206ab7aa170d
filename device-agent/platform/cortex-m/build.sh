#!/usr/bin/env bash
# Cross-compiles the agent core for a Cortex-M4 (arm-none-eabi, newlib-nano, -Os
# -fno-exceptions -fno-rtti), links the example firmware, runs the core's tests on an
# emulated Cortex-M4 when qemu-system-arm is installed, prints .text/.data/.bss of the core
# and of the whole firmware, and checks the targets (core < 32 KiB flash, < 8 KiB RAM
# besides the chunk buffer).
#
#   device-agent/platform/cortex-m/build.sh [BUILD_DIR]    default BUILD_DIR: <repo>/build-fw
#
# Exit status: 0 within targets and tests passed; 1 over a target, a test failed or the
# build broke; 77 the cross compiler is not installed (ctest reports the test as skipped).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
build=${1:-$root/build-fw}

if ! command -v arm-none-eabi-g++ >/dev/null 2>&1; then
  echo "firmware: SKIPPED, arm-none-eabi-g++ not found (scripts/install-deps.sh installs" \
       "gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib)" >&2
  exit 77
fi

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [[ -f $build/CMakeCache.txt ]]; then
  if ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$here" "$build/CMakeCache.txt"; then
    # A firmware build dir of this project from another source dir (before the move from
    # device-agent/firmware/, another checkout) starts over; anything else is not ours.
    if ! grep -qx "CMAKE_PROJECT_NAME:STATIC=ota_firmware" "$build/CMakeCache.txt"; then
      echo "firmware: $build holds another CMake project; give an empty or firmware build dir" >&2
      exit 1
    fi
    rm -rf "$build"
  fi
  # A build dir configured with another generator cannot be switched; start it over.
  if ! grep -qx "CMAKE_GENERATOR:INTERNAL=${generator[1]:-Unix Makefiles}" "$build/CMakeCache.txt"; then
    rm -rf "$build"
  fi
fi
mkdir -p "$build"
if ! { cmake -S "$here" -B "$build" "${generator[@]}" -DOTA_WERROR=ON \
         -DCMAKE_TOOLCHAIN_FILE="$here/toolchain-arm-none-eabi.cmake" &&
       cmake --build "$build"; } >"$build/build.log" 2>&1; then
  cat "$build/build.log" >&2
  echo "firmware: build FAILED" >&2
  exit 1
fi
echo "firmware: built in $build ($(arm-none-eabi-g++ -dumpversion), Cortex-M4F, -Os -fno-exceptions -fno-rtti, newlib-nano)"

stack=()
if command -v qemu-system-arm >/dev/null 2>&1; then
  echo "firmware: core tests on qemu-system-arm -machine mps2-an386 (semihosting)"
  set +e
  # The tests end the emulator through semihosting SYS_EXIT; timeout guards a hung target.
  timeout 120 qemu-system-arm -machine mps2-an386 -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native -kernel "$build/ota_core_tests.elf" \
    >"$build/core_tests.log" 2>&1
  rc=$?
  set -e
  sed 's/^/  /' "$build/core_tests.log"
  if ((rc != 0)); then
    echo "firmware: core tests FAILED (exit $rc)" >&2
    exit 1
  fi
  peak=$(sed -n 's/^agent stack peak \([0-9]*\) B$/\1/p' "$build/core_tests.log")
  [[ -n $peak ]] && stack=(--stack-peak "$peak")
else
  echo "firmware: qemu-system-arm not found, core tests on the target skipped"
fi

python3 "$here/size_report.py" --map "$build/ota_example_fw.elf.map" \
  --elf "$build/ota_example_fw.elf" --archive "$build/libota_core.a" "${stack[@]}"
