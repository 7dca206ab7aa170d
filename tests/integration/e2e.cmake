# End-to-end tests: real mosquitto (broker-config/), ota-controller, ota-devsim, otactl.
add_executable(e2e_tests ${CMAKE_CURRENT_LIST_DIR}/e2e_test.cpp)
target_link_libraries(e2e_tests PRIVATE ota_test_support PkgConfig::HTTPLIB nlohmann_json::nlohmann_json
  OpenSSL::Crypto GTest::gtest_main ota_warnings)
target_compile_definitions(e2e_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>")
add_dependencies(e2e_tests ota-controller ota-devsim otactl)
gtest_discover_tests(e2e_tests TEST_PREFIX "e2e." PROPERTIES LABELS integration TIMEOUT 300
  DISCOVERY_TIMEOUT 30)
