# Installation and the Debian package.
#
#   cmake --install build [--prefix /usr]      # or DESTDIR=/tmp/root cmake --install build
#   cd build && cpack -G DEB                   # ota-orchestrator_<version>_<arch>.deb
#
# Layout (prefix P, /usr in the .deb): P/bin/{ota-controller,otactl,ota-agent,ota-devsim,ota-conformance,ota-pki-devices},
# P/lib/systemd/system/{ota-controller,ota-agent}.service, P/share/ota/broker-config/ (the
# mosquitto template, pki.sh, run-broker.sh, install-dropin.sh), P/share/ota/monitoring/
# (Prometheus alert rules, Grafana dashboard), P/share/ota/web/ (the web dashboard the
# controller serves at /ui/), P/share/ota/examples/ and the config files in
# SYSCONF/ota/ (SYSCONF = /etc for prefix /usr, else P/etc; written only when missing, so a
# reinstall keeps local changes; in the .deb they are conffiles). The units' paths are
# written at install time, so they match wherever the prefix points.
include(GNUInstallDirs)

set(OTA_PKG_DIR ${PROJECT_SOURCE_DIR}/packaging)

# ota-pki-devices: what broker-config/pki.sh uses (found on PATH) to issue many device
# certificates in one process.
install(TARGETS ota-agent ota-devsim ota-conformance ota-pki-devices RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# (ota-controller and otactl: service/CMakeLists.txt)

install(FILES
    ${PROJECT_SOURCE_DIR}/broker-config/mosquitto.conf.in
    ${PROJECT_SOURCE_DIR}/broker-config/acl.in
    ${PROJECT_SOURCE_DIR}/broker-config/README.md
  DESTINATION ${CMAKE_INSTALL_DATADIR}/ota/broker-config)
install(PROGRAMS
    ${PROJECT_SOURCE_DIR}/broker-config/pki.sh
    ${PROJECT_SOURCE_DIR}/broker-config/run-broker.sh
    ${PROJECT_SOURCE_DIR}/broker-config/install-dropin.sh
  DESTINATION ${CMAKE_INSTALL_DATADIR}/ota/broker-config)
install(FILES
    ${PROJECT_SOURCE_DIR}/service/monitoring/ota-alerts.yml
    ${PROJECT_SOURCE_DIR}/service/monitoring/ota-alerts.test.yml
    ${PROJECT_SOURCE_DIR}/service/monitoring/grafana-dashboard.json
  DESTINATION ${CMAKE_INSTALL_DATADIR}/ota/monitoring)
# The web dashboard: ota-controller finds it at ../share/ota/web from its own binary.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/service/web/ DESTINATION ${CMAKE_INSTALL_DATADIR}/ota/web)
install(FILES
    ${OTA_PKG_DIR}/etc/controller.toml ${OTA_PKG_DIR}/etc/controller.env
    ${OTA_PKG_DIR}/etc/agent.toml ${OTA_PKG_DIR}/etc/agent.env
  DESTINATION ${CMAKE_INSTALL_DATADIR}/ota/examples)
install(FILES
    ${PROJECT_SOURCE_DIR}/README.md
    ${PROJECT_SOURCE_DIR}/docs/operations.md
    ${PROJECT_SOURCE_DIR}/service/API.md
    ${PROJECT_SOURCE_DIR}/proto/PROTOCOL.md
  DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/ota-orchestrator)

# Units and /etc/ota, rendered when installing: CMAKE_INSTALL_PREFIX is then the prefix of
# this install (--prefix, or /usr under cpack), DESTDIR the staging root.
install(CODE "
  set(_ota_pkg \"${OTA_PKG_DIR}\")
  set(_ota_datadir \"${CMAKE_INSTALL_DATADIR}\")
  set(_ota_docdir \"${CMAKE_INSTALL_DATADIR}/doc/ota-orchestrator\")
  set(_ota_bindir \"${CMAKE_INSTALL_BINDIR}\")
  include(\"${OTA_PKG_DIR}/install-units.cmake\")
")

# ------------------------------------------------------------------------------ CPack DEB
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME ota-orchestrator)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "OTA orchestrator maintainers <ota@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "signed firmware updates for device fleets over MQTT/TLS (controller, CLI, agent)")
set(CPACK_PACKAGE_DESCRIPTION
    "ota-controller (image store, signing, staged rollouts, SQLite), otactl, the ota-agent daemon for Linux devices and the ota-devsim simulator, with systemd units, the Mosquitto broker configuration and PKI script, and Prometheus alert rules and a Grafana dashboard.")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
# Install into /usr with the staging root as DESTDIR (so /etc and the units land in the
# package, never on the build machine).
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
# Runtime libraries from the binaries (dpkg-shlibdeps: libmosquitto1, libssl3, libsqlite3-0,
# libcpp-httplib0.11, libdeflate0, libc6, libstdc++6, libgcc-s1), plus useradd/groupadd for postinst.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "mosquitto, openssl")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "prometheus, mosquitto-clients, sqlite3")
set(CPACK_DEBIAN_COMPRESSION_TYPE gzip)
foreach(_script postinst prerm postrm)
  configure_file(${OTA_PKG_DIR}/debian/${_script}.in ${CMAKE_BINARY_DIR}/debian/${_script} @ONLY)
endforeach()
file(WRITE ${CMAKE_BINARY_DIR}/debian/conffiles
     "/etc/ota/controller.toml\n/etc/ota/controller.env\n/etc/ota/agent.toml\n/etc/ota/agent.env\n")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_BINARY_DIR}/debian/postinst ${CMAKE_BINARY_DIR}/debian/prerm
    ${CMAKE_BINARY_DIR}/debian/postrm ${CMAKE_BINARY_DIR}/debian/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)
