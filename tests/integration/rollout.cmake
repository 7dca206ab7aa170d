# Staged rollout integration tests: real mosquitto (broker-config/), ota-controller, ota-devsim
# fleets of up to 200 devices, otactl. Each test starts and stops its own processes by pid.
add_executable(rollout_tests ${CMAKE_CURRENT_LIST_DIR}/rollout_test.cpp)
target_link_libraries(rollout_tests PRIVATE ota_test_support PkgConfig::HTTPLIB nlohmann_json::nlohmann_json
  OpenSSL::Crypto GTest::gtest_main ota_warnings)
target_compile_definitions(rollout_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>")
add_dependencies(rollout_tests ota-controller ota-devsim otactl)
gtest_discover_tests(rollout_tests TEST_PREFIX "rollout." PROPERTIES LABELS integration TIMEOUT 300
  DISCOVERY_TIMEOUT 30)
