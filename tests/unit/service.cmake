# Service (controller + otactl) unit tests (label `unit`, no network). Included from
# tests/CMakeLists.txt.
add_executable(service_tests
  ${CMAKE_CURRENT_LIST_DIR}/service_store_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_store_recovery_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_recovery_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_inbound_queue_test.cpp
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
  ${CMAKE_CURRENT_LIST_DIR}/service_keys_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/service_api_test.cpp)
target_link_libraries(service_tests PRIVATE ota_service ota_policy ota_url ota_test_support ota::proto OpenSSL::Crypto
                      PkgConfig::SQLITE3 PkgConfig::HTTPLIB OpenSSL::SSL Threads::Threads GTest::gtest_main
                      ota_warnings)
target_compile_definitions(service_tests PRIVATE OTACTL_PATH="$<TARGET_FILE:otactl>"
                           OTA_CONTROLLER_PATH="$<TARGET_FILE:ota-controller>"
                           OTA_SOURCE_DIR="${OTA_SOURCE_DIR}")
add_dependencies(service_tests otactl ota-controller)
gtest_discover_tests(service_tests TEST_PREFIX "service." PROPERTIES LABELS unit)

# The OpenAPI description (service/openapi.json) against the OpenAPI 3.0 schema, with the
# validator scripts/install-deps.sh installs into .cache/openapi (skipped without it).
# ServiceOpenApi.* (service_openapi_test.cpp) checks it against the server's route table.
find_program(OTA_NODE NAMES node nodejs)
if(OTA_NODE)
  add_test(NAME service.openapi_validate
           COMMAND ${OTA_NODE} ${OTA_SOURCE_DIR}/tests/openapi/validate_openapi.js
                   ${OTA_SOURCE_DIR}/service/openapi.json)
else()
  add_test(NAME service.openapi_validate
           COMMAND sh -c "echo 'service.openapi_validate: no node (scripts/install-deps.sh)'; exit 77")
endif()
set_tests_properties(service.openapi_validate PROPERTIES LABELS unit SKIP_RETURN_CODE 77
                     ENVIRONMENT "NODE_PATH=${OTA_SOURCE_DIR}/.cache/openapi/node_modules")
