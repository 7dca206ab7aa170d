# broker_tests — the broker configuration (broker-config/) against a real mosquitto.
add_executable(broker_tests ${CMAKE_CURRENT_LIST_DIR}/broker_test.cpp)
target_link_libraries(broker_tests PRIVATE ota_test_support GTest::gtest_main ota_warnings)
gtest_discover_tests(broker_tests
  TEST_PREFIX "broker."
  DISCOVERY_TIMEOUT 30
  PROPERTIES LABELS integration TIMEOUT 60)
