# Fleet-scale delivery: real mosquitto (broker-config/), ota-controller, an ota-devsim fleet of
# 300 devices, the controller's send budget squeezed. Each test stops its processes by pid.
add_executable(fleet_flow_tests ${CMAKE_CURRENT_LIST_DIR}/fleet_flow_test.cpp)
target_link_libraries(fleet_flow_tests PRIVATE ota_test_support PkgConfig::HTTPLIB
  nlohmann_json::nlohmann_json OpenSSL::Crypto GTest::gtest_main ota_warnings)
target_compile_definitions(fleet_flow_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>")
add_dependencies(fleet_flow_tests ota-controller ota-devsim otactl)
gtest_discover_tests(fleet_flow_tests TEST_PREFIX "fleet_flow." PROPERTIES LABELS integration
  TIMEOUT 600 DISCOVERY_TIMEOUT 30)
