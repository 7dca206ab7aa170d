# The web dashboard in a real browser (label `integration`): Debian's chromium driven by
# playwright-core (tests/web/, installed into .cache/web/ by scripts/install-deps.sh) against
# a real mosquitto (broker-config/), ota-controller and an ota-devsim fleet. Screenshots of
# the fleet and a rollout page go to <build>/web-artifacts/. Skipped (with the reason) when
# chromium or playwright-core is not installed.
add_executable(web_ui_tests ${CMAKE_CURRENT_LIST_DIR}/web_ui_test.cpp)
target_link_libraries(web_ui_tests PRIVATE ota_test_support PkgConfig::HTTPLIB
  nlohmann_json::nlohmann_json GTest::gtest_main ota_warnings)
target_compile_definitions(web_ui_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>"
  OTA_WEB_TEST_SCRIPT="${OTA_SOURCE_DIR}/tests/web/dashboard_test.js"
  OTA_WEB_NODE_MODULES="${OTA_SOURCE_DIR}/.cache/web/node_modules"
  OTA_WEB_ROOT="${OTA_SOURCE_DIR}/service/web"
  OTA_WEB_ARTIFACTS="${CMAKE_BINARY_DIR}/web-artifacts")
add_dependencies(web_ui_tests ota-controller ota-devsim otactl)
gtest_discover_tests(web_ui_tests TEST_PREFIX "web." PROPERTIES LABELS integration TIMEOUT 180
  DISCOVERY_TIMEOUT 30)
