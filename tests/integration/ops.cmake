# Operations (label `integration`): settings from the command line, OTA_* environment and
# --config file (precedence, --print-config), JSON logs of a real run, and /metrics of a real
# controller against the Grafana dashboard and the alert rules (service/monitoring/);
# `promtool check rules` / `promtool test rules` on the rules; the .deb and cmake --install.
add_executable(ops_tests ${CMAKE_CURRENT_LIST_DIR}/ops_test.cpp)
target_link_libraries(ops_tests PRIVATE ota_test_support ota_service ota_cli_config PkgConfig::HTTPLIB
  nlohmann_json::nlohmann_json GTest::gtest_main ota_warnings)
target_compile_definitions(ops_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>")
add_dependencies(ops_tests ota-controller ota-devsim otactl)
gtest_discover_tests(ops_tests TEST_PREFIX "ops." PROPERTIES LABELS integration TIMEOUT 300
  DISCOVERY_TIMEOUT 30)

# The alert rules: syntax (check) and behaviour (test: ota-alerts.test.yml). promtool comes
# with Debian's `prometheus` package (scripts/install-deps.sh); without it: skipped (77).
set(_ota_monitoring ${OTA_SOURCE_DIR}/service/monitoring)
add_test(NAME monitoring.promtool_check_rules
  COMMAND sh -c "command -v promtool >/dev/null || { echo 'promtool not installed'; exit 77; }; exec promtool check rules ota-alerts.yml"
  WORKING_DIRECTORY ${_ota_monitoring})
add_test(NAME monitoring.promtool_test_rules
  COMMAND sh -c "command -v promtool >/dev/null || { echo 'promtool not installed'; exit 77; }; exec promtool test rules ota-alerts.test.yml"
  WORKING_DIRECTORY ${_ota_monitoring})
set_tests_properties(monitoring.promtool_check_rules monitoring.promtool_test_rules PROPERTIES
  LABELS integration SKIP_RETURN_CODE 77 TIMEOUT 60)

# The Debian package (cpack -G DEB) and cmake --install: tests/integration/package_test.sh.
add_test(NAME package.deb COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/package_test.sh ${CMAKE_BINARY_DIR})
set_tests_properties(package.deb PROPERTIES LABELS integration TIMEOUT 180)
