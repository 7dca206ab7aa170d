# The agent core as firmware: cross build for a Cortex-M4, the core's tests on qemu, and the
# flash/RAM targets (device-agent/platform/cortex-m/build.sh). Included from tests/CMakeLists.txt.
# Skipped (exit 77) only when the arm-none-eabi cross compiler is not installed.
add_test(NAME firmware.cortex_m4
  COMMAND ${OTA_SOURCE_DIR}/device-agent/platform/cortex-m/build.sh ${CMAKE_BINARY_DIR}/firmware-m4)
set_tests_properties(firmware.cortex_m4 PROPERTIES
  LABELS "unit;firmware"
  SKIP_RETURN_CODE 77
  TIMEOUT 300)
