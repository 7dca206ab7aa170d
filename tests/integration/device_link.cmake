# Device MQTT link on a real mosquitto (broker-config/) with ota-controller, ota-devsim and
# ota-agent: offline within 2 s of SIGTERM, back-off reset only on CONNACK, the fleet's
# reconnects spread out after a broker restart. MosquittoTransport is also driven directly.
add_executable(device_link_tests ${CMAKE_CURRENT_LIST_DIR}/device_link_test.cpp)
target_link_libraries(device_link_tests PRIVATE ota_test_support ota::agent_linux ota::proto
  PkgConfig::HTTPLIB nlohmann_json::nlohmann_json GTest::gtest_main ota_warnings)
target_compile_definitions(device_link_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_AGENT_BIN="$<TARGET_FILE:ota-agent>")
add_dependencies(device_link_tests ota-controller ota-devsim ota-agent)
gtest_discover_tests(device_link_tests TEST_PREFIX "device_link." PROPERTIES LABELS integration
  TIMEOUT 300 DISCOVERY_TIMEOUT 30)
