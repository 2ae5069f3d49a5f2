# Install rules and the Debian package (cpack -G DEB; scripts/package.sh).
#
#   /usr/sbin/portico, /usr/bin/porticoctl
#   /lib/systemd/system/portico.service
#   /etc/portico/portico.toml                      (conffile; packaging/portico.toml)
#   /usr/share/man/man8/portico.8.gz, porticoctl.8.gz, man5/portico.toml.5.gz
#   /usr/share/bash-completion/completions/porticoctl
#   /usr/share/doc/portico/portico.toml.reference   (conf/portico.toml, every key)
#
# Depends come from dpkg-shlibdeps (CPACK_DEBIAN_PACKAGE_SHLIBDEPS).
include(GNUInstallDirs)

set(PORTICO_MAN_PAGES portico.8 porticoctl.8 portico.toml.5)
set(man_outputs "")
foreach(page ${PORTICO_MAN_PAGES})
  set(out ${CMAKE_CURRENT_BINARY_DIR}/man/${page}.gz)
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/man
    # -n: no name or time stamp in the archive, so the file is reproducible.
    COMMAND sh -c "gzip -9n -c '${CMAKE_CURRENT_SOURCE_DIR}/docs/man/${page}' > '${out}'"
    DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/docs/man/${page}
    COMMENT "man page ${page}.gz"
    VERBATIM)
  list(APPEND man_outputs ${out})
  string(REGEX MATCH "[0-9]$" section ${page})
  install(FILES ${out} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
endforeach()
add_custom_target(portico_man ALL DEPENDS ${man_outputs})

install(TARGETS portico RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR})
install(TARGETS porticoctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/conf/bash-completion/porticoctl
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions)
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/conf/portico.toml
        DESTINATION ${CMAKE_INSTALL_DOCDIR} RENAME portico.toml.reference)
# Absolute on purpose: Debian's places, whatever the prefix.
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/conf/systemd/portico.service
        DESTINATION /lib/systemd/system)
install(FILES ${CMAKE_CURRENT_SOURCE_DIR}/packaging/portico.toml DESTINATION /etc/portico)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME portico)
set(CPACK_PACKAGE_VENDOR "Portico")
set(CPACK_PACKAGE_CONTACT "Portico developers <portico@example.org>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "IMAP4 proxy with Exchange-style health probes and responders")
string(CONCAT CPACK_PACKAGE_DESCRIPTION
       "Portico answers IMAP pre-login itself, routes each user to a mailbox backend by\n"
       "weighted rendezvous hashing and relays the session, accounting every command.\n"
       "It runs Exchange's IMAP health probes, monitors and responders and shows them\n"
       "on an HTTP status endpoint and through porticoctl.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION mail)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "bash-completion")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_SOURCE_DIR}/packaging/debian/conffiles
    ${CMAKE_CURRENT_SOURCE_DIR}/packaging/debian/postinst
    ${CMAKE_CURRENT_SOURCE_DIR}/packaging/debian/prerm
    ${CMAKE_CURRENT_SOURCE_DIR}/packaging/debian/postrm)
include(CPack)
