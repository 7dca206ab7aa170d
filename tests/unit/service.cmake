# Service (controller + otactl) unit tests (label `unit`, no network). Included from
# tests/CMakeLists.txt.
add_executable(service_tests
  ${CMAKE_CURRENT_LIST_DIR}/service_store_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_store_recovery_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_recovery_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_signing_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_images_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_controller_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_chunk_flow_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_rollout_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_cli_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_cli_live_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_rollout_schedule_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_policy_grammar_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_http_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_keys_test.cpp)
target_link_libraries(service_tests PRIVATE ota_service ota_policy ota_test_support ota::proto OpenSSL::Crypto
                      PkgConfig::HTTPLIB OpenSSL::SSL Threads::Threads GTest::gtest_main
                      ota_warnings)
target_compile_definitions(service_tests PRIVATE OTACTL_PATH="$<TARGET_FILE:otactl>"
                           OTA_CONTROLLER_PATH="$<TARGET_FILE:ota-controller>"
                           OTA_SOURCE_DIR="${OTA_SOURCE_DIR}")
add_dependencies(service_tests otactl ota-controller)
gtest_discover_tests(service_tests TEST_PREFIX "service." PROPERTIES LABELS unit)
