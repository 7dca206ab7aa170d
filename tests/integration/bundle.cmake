# Application bundles end to end (label `integration`): mosquitto, ota-controller, ota-devsim
# --app-dir (BundleFlash), otactl image add DIR.
add_executable(bundle_e2e_tests ${CMAKE_CURRENT_LIST_DIR}/bundle_test.cpp)
target_link_libraries(bundle_e2e_tests PRIVATE ota_test_support PkgConfig::HTTPLIB
  nlohmann_json::nlohmann_json GTest::gtest_main ota_warnings)
target_compile_definitions(bundle_e2e_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>")
add_dependencies(bundle_e2e_tests ota-controller ota-devsim otactl)
gtest_discover_tests(bundle_e2e_tests TEST_PREFIX "bundle_e2e." PROPERTIES LABELS integration
  TIMEOUT 300 DISCOVERY_TIMEOUT 30)
