# Fault recovery of the controller: broker kills and restarts, no broker at start, a damaged
# database, a full disk (a tmpfs; needs root), backup and restore. Real mosquitto, controller,
# ota-devsim, otactl; every process stopped by its pid.
add_executable(recovery_tests ${CMAKE_CURRENT_LIST_DIR}/recovery_test.cpp)
target_link_libraries(recovery_tests PRIVATE ota_test_support PkgConfig::HTTPLIB nlohmann_json::nlohmann_json
  OpenSSL::Crypto GTest::gtest_main ota_warnings)
target_compile_definitions(recovery_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>")
add_dependencies(recovery_tests ota-controller ota-devsim otactl)
gtest_discover_tests(recovery_tests TEST_PREFIX "recovery." PROPERTIES LABELS integration TIMEOUT 600
  DISCOVERY_TIMEOUT 30)
