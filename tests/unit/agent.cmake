# Agent core and Linux port unit tests (label `unit`, no network). Included from
# tests/CMakeLists.txt. The fakes in agent_support/ stand where hardware would be.
add_library(agent_test_support STATIC
  ${CMAKE_CURRENT_LIST_DIR}/agent_support/fakes.cpp
  ${CMAKE_CURRENT_LIST_DIR}/agent_support/signer.cpp)
target_include_directories(agent_test_support PUBLIC ${CMAKE_CURRENT_LIST_DIR}/agent_support)
target_link_libraries(agent_test_support PUBLIC ota::agent ota::sim_boot ota::agent_linux ota::proto
  GTest::gtest OpenSSL::Crypto PRIVATE ota_warnings)

add_executable(agent_tests
  ${CMAKE_CURRENT_LIST_DIR}/agent_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/agent_keys_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/agent_power_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/agent_linux_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/agent_sim_boot_test.cpp)
target_link_libraries(agent_tests PRIVATE agent_test_support GTest::gtest_main ota_warnings)
target_compile_definitions(agent_tests PRIVATE OTA_FIXTURE_DIR="${OTA_FIXTURE_DIR}")
gtest_discover_tests(agent_tests TEST_PREFIX "agent." PROPERTIES LABELS unit)
