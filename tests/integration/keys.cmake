# Offline signing and key rotation end to end (label `integration`): a real mosquitto
# (broker-config/), ota-controller with an online signing key and the root public key,
# ota-devsim provisioned with root + release + online keys, otactl image sign / keys sign / keys
# push, and raw offers published with the controller's broker identity.
add_executable(keys_e2e_tests ${CMAKE_CURRENT_LIST_DIR}/keys_test.cpp)
target_link_libraries(keys_e2e_tests PRIVATE ota_test_support ota_signing ota::proto
  PkgConfig::HTTPLIB nlohmann_json::nlohmann_json OpenSSL::Crypto GTest::gtest_main ota_warnings)
target_compile_definitions(keys_e2e_tests PRIVATE
  OTA_CONTROLLER_BIN="$<TARGET_FILE:ota-controller>"
  OTA_DEVSIM_BIN="$<TARGET_FILE:ota-devsim>"
  OTA_OTACTL_BIN="$<TARGET_FILE:otactl>")
add_dependencies(keys_e2e_tests ota-controller ota-devsim otactl)
gtest_discover_tests(keys_e2e_tests TEST_PREFIX "keys_e2e." PROPERTIES LABELS integration
  TIMEOUT 300 DISCOVERY_TIMEOUT 30)
