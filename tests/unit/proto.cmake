# ota::proto unit tests (label `unit`). Included from tests/CMakeLists.txt.
set(OTA_PROTO_FIXTURES ${OTA_FIXTURE_DIR}/proto)

add_executable(proto_tests
  ${CMAKE_CURRENT_LIST_DIR}/proto_json_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_messages_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_frame_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_topics_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_fixtures_test.cpp)
# proto/src gives the tests the internal JSON reader (json.hpp).
target_include_directories(proto_tests PRIVATE ${OTA_SOURCE_DIR}/proto/src)
target_compile_definitions(proto_tests PRIVATE OTA_PROTO_FIXTURE_DIR="${OTA_PROTO_FIXTURES}")
target_link_libraries(proto_tests PRIVATE ota::proto GTest::gtest_main ota_warnings)
# Prefix so that `ctest -R proto` selects them.
gtest_discover_tests(proto_tests TEST_PREFIX "proto." PROPERTIES LABELS unit)

# JSON Schemas: every valid fixture validates, corrupt ones are rejected (python3-jsonschema).
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  add_test(NAME proto_schemas
    COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/validate_schemas.py
            ${OTA_SOURCE_DIR}/proto/schemas ${OTA_PROTO_FIXTURES})
  set_tests_properties(proto_schemas PROPERTIES LABELS unit SKIP_RETURN_CODE 77)
endif()

# The libFuzzer harness. With clang it can be built as a real fuzzer by hand
# (clang++ -fsanitize=fuzzer ...); everywhere else it is built with a small driver that replays
# every fixture through it, so the harness is compiled and exercised in CI.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  add_executable(proto_fuzz_replay ${OTA_SOURCE_DIR}/tests/fuzz/proto_fuzz.cpp)
  target_compile_definitions(proto_fuzz_replay PRIVATE OTA_FUZZ_REPLAY_MAIN)
  target_link_libraries(proto_fuzz_replay PRIVATE ota::proto ota_warnings)
  add_test(NAME proto_fuzz_replay COMMAND proto_fuzz_replay ${OTA_PROTO_FIXTURES})
  set_tests_properties(proto_fuzz_replay PROPERTIES LABELS unit)
endif()
