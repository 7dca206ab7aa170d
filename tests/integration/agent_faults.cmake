# Agent fault tests on a real mosquitto (broker-config/) with ota-controller and ota-devsim:
# SIGKILL in every state of the agent's state machine, heartbeat and offer policy on the wire.
add_executable(agent_faults_tests ${CMAKE_CURRENT_LIST_DIR}/agent_faults_test.cpp)
target_link_libraries(agent_faults_tests PRIVATE ota_test_support ota::proto
  PkgConfig::HTTPLIB nlohmann_json::nlohmann_json OpenSSL::Crypto GTest::gtest_main ota_warnings)
target_compile_definitions(agent_faults_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>")
add_dependencies(agent_faults_tests ota-controller ota-devsim)
gtest_discover_tests(agent_faults_tests TEST_PREFIX "agent_faults." PROPERTIES LABELS integration
  TIMEOUT 300 DISCOVERY_TIMEOUT 30)
