# The conformance kit (proto/conformance/) against ota-agent, one ota-devsim device and a
# deliberately broken ota-devsim device, on a real mosquitto (broker-config/).
add_executable(conformance_tests ${CMAKE_CURRENT_LIST_DIR}/conformance_test.cpp)
target_link_libraries(conformance_tests PRIVATE ota_test_support nlohmann_json::nlohmann_json
  GTest::gtest_main ota_warnings)
target_compile_definitions(conformance_tests PRIVATE
  OTA_CONFORMANCE_BIN="$<TARGET_FILE:ota-conformance>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_AGENT_BIN="$<TARGET_FILE:ota-agent>")
add_dependencies(conformance_tests ota-conformance ota-devsim ota-agent)
gtest_discover_tests(conformance_tests TEST_PREFIX "conformance." PROPERTIES LABELS integration
  TIMEOUT 300 DISCOVERY_TIMEOUT 30)
