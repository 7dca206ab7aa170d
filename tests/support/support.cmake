# ota_test_support — temp dirs, test PKI, a real mosquitto broker, MQTT test client.
add_library(ota_test_support STATIC ${CMAKE_CURRENT_LIST_DIR}/test_env.cpp)
target_include_directories(ota_test_support PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_definitions(ota_test_support PRIVATE OTA_SOURCE_DIR="${OTA_SOURCE_DIR}"
  OTA_PKI_DEVICES_BIN="$<TARGET_FILE:ota-pki-devices>")
add_dependencies(ota_test_support ota-pki-devices)
target_link_libraries(ota_test_support
  PUBLIC PkgConfig::MOSQUITTO OpenSSL::SSL OpenSSL::Crypto Threads::Threads GTest::gtest
  PRIVATE ota_warnings)
