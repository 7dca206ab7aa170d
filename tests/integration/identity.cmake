# identity_tests — who a client is on the broker: client id = certificate CN (no session
# takeover with another identity's id), the read-only monitoring identity, device revocation
# (pki.sh revoke, CRL, reload/restart) and the PKI's file modes. Real mosquitto, broker-config/.
add_executable(identity_tests ${CMAKE_CURRENT_LIST_DIR}/identity_test.cpp)
target_link_libraries(identity_tests PRIVATE ota_test_support GTest::gtest_main ota_warnings)
gtest_discover_tests(identity_tests
  TEST_PREFIX "identity."
  DISCOVERY_TIMEOUT 30
  PROPERTIES LABELS integration TIMEOUT 120)
