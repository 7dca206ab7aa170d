# sim_scale_tests — ota-devsim at scale (one process, many devices on epoll workers, its own
# descriptor limit) and pki.sh devices at counts past 999, on a real mosquitto with the real
# ota-controller.
add_executable(sim_scale_tests ${CMAKE_CURRENT_LIST_DIR}/sim_scale_test.cpp)
target_link_libraries(sim_scale_tests PRIVATE ota_test_support PkgConfig::HTTPLIB
  nlohmann_json::nlohmann_json GTest::gtest_main ota_warnings)
target_compile_definitions(sim_scale_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>")
add_dependencies(sim_scale_tests ota-controller ota-devsim otactl)
gtest_discover_tests(sim_scale_tests TEST_PREFIX "sim_scale." PROPERTIES LABELS integration
  TIMEOUT 400 DISCOVERY_TIMEOUT 30)
