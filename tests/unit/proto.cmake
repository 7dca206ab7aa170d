# ota::proto unit tests (label `unit`). Included from tests/CMakeLists.txt.
set(OTA_PROTO_FIXTURES ${OTA_FIXTURE_DIR}/proto)

add_executable(proto_tests
  ${CMAKE_CURRENT_LIST_DIR}/proto_json_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_messages_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_frame_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_crc_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_topics_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_fixtures_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/proto_keys_test.cpp)
# proto/src gives the tests the internal JSON reader (json.hpp).
target_include_directories(proto_tests PRIVATE ${OTA_SOURCE_DIR}/proto/src)
target_compile_definitions(proto_tests PRIVATE OTA_PROTO_FIXTURE_DIR="${OTA_PROTO_FIXTURES}")
# OpenSSL only to check p256_spki_der against its DER (the codec itself needs none).
target_link_libraries(proto_tests PRIVATE ota::proto GTest::gtest_main OpenSSL::Crypto ota_warnings)
# Prefix so that `ctest -R proto` selects them.
gtest_discover_tests(proto_tests TEST_PREFIX "proto." PROPERTIES LABELS unit)

# The same CRC tests against the codec sources as a firmware port compiles them (no
# libdeflate: frame.cpp's sliced tables).
add_executable(proto_sliced_crc_tests ${CMAKE_CURRENT_LIST_DIR}/proto_crc_test.cpp ${OTA_PROTO_SOURCES})
target_include_directories(proto_sliced_crc_tests PRIVATE ${OTA_SOURCE_DIR}/proto/include
                           ${OTA_SOURCE_DIR}/proto/src)
target_link_libraries(proto_sliced_crc_tests PRIVATE GTest::gtest_main ota_warnings)
gtest_discover_tests(proto_sliced_crc_tests TEST_PREFIX "proto.sliced." PROPERTIES LABELS unit)

# JSON Schemas: every valid fixture validates, corrupt ones are rejected (python3-jsonschema).
find_package(Python3 COMPONENTS Interpreter)
if(Python3_Interpreter_FOUND)
  add_test(NAME proto_schemas
    COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/validate_schemas.py
            ${OTA_SOURCE_DIR}/proto/schemas ${OTA_PROTO_FIXTURES})
  set_tests_properties(proto_schemas PROPERTIES LABELS unit SKIP_RETURN_CODE 77)
endif()

# The libFuzzer harnesses (tests/fuzz). With clang they can be built as real fuzzers by hand
# (clang++ -fsanitize=fuzzer ..., see the head of each harness); everywhere else each is built
# with a small driver (tests/fuzz/replay_driver.hpp) that replays the seed corpus through it
# and then a fixed number of deterministic mutations of it, so the harnesses are compiled and
# exercised in CI. --seconds bounds a slow (sanitizer) build; a failure leaves the input in
# fuzz-crash.bin in the build's tests directory.
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  set(OTA_FUZZ_CORPUS ${OTA_SOURCE_DIR}/tests/fuzz/corpus)
  add_executable(proto_fuzz_replay ${OTA_SOURCE_DIR}/tests/fuzz/proto_fuzz.cpp)
  target_compile_definitions(proto_fuzz_replay PRIVATE OTA_FUZZ_REPLAY_MAIN)
  target_link_libraries(proto_fuzz_replay PRIVATE ota::proto ota_warnings)
  add_test(NAME proto_fuzz_replay COMMAND proto_fuzz_replay ${OTA_PROTO_FIXTURES})
  set_tests_properties(proto_fuzz_replay PROPERTIES LABELS unit)

  # The bundle decoder (controller uploads, the Linux port's downloads).
  add_executable(bundle_fuzz_replay ${OTA_SOURCE_DIR}/tests/fuzz/bundle_fuzz.cpp)
  target_compile_definitions(bundle_fuzz_replay PRIVATE OTA_FUZZ_REPLAY_MAIN)
  target_link_libraries(bundle_fuzz_replay PRIVATE ota::proto_bundle ota_warnings)
  add_test(NAME bundle_fuzz_replay COMMAND bundle_fuzz_replay --mutations=100000 --seconds=20
           ${OTA_FUZZ_CORPUS}/bundle)
  set_tests_properties(bundle_fuzz_replay PROPERTIES LABELS unit TIMEOUT 120)

  # The controller's inbound device messages (Controller::on_message).
  add_executable(controller_fuzz_replay ${OTA_SOURCE_DIR}/tests/fuzz/controller_fuzz.cpp)
  target_compile_definitions(controller_fuzz_replay PRIVATE OTA_FUZZ_REPLAY_MAIN)
  target_include_directories(controller_fuzz_replay PRIVATE ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(controller_fuzz_replay PRIVATE ota_service ota::proto OpenSSL::Crypto
                        ota_warnings)
  add_test(NAME controller_fuzz_replay COMMAND controller_fuzz_replay --mutations=100000
           --seconds=20 ${OTA_PROTO_FIXTURES}/valid ${OTA_FUZZ_CORPUS}/controller)
  set_tests_properties(controller_fuzz_replay PROPERTIES LABELS unit TIMEOUT 120)
endif()
