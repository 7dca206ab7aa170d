# Application bundles (label `unit`): the format (ota::proto_bundle) and the Linux port that
# installs them as a file tree (BundleFlash), power cut at every filesystem operation included.
add_executable(bundle_tests ${CMAKE_CURRENT_LIST_DIR}/bundle_test.cpp)
target_link_libraries(bundle_tests PRIVATE ota::proto_bundle ota::agent_linux ota_test_support
  GTest::gtest_main ota_warnings)
gtest_discover_tests(bundle_tests TEST_PREFIX "bundle." PROPERTIES LABELS unit)
