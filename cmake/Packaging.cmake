# SPDX-License-Identifier: MIT
# Install rules for the daemon side and the Debian package. `cmake --install` puts heraldd in
# <prefix>/bin, heraldd.service in <prefix>/lib/systemd/system (its ExecStart= follows the
# prefix), the shipped configuration in /etc/herald and the copyright file in the doc
# directory; `cpack -G DEB` turns the same rules into herald_<version>_<arch>.deb with /usr as
# prefix. libherald and the herald CLI install themselves from clients/ and land in the same
# package. Include this after the heraldd target exists.

include(GNUInstallDirs)

set(HD_PKG_DIR ${CMAKE_BINARY_DIR}/packaging)
set(HD_CONFIG_DIR /etc/herald)

# -- heraldd ---------------------------------------------------------------------------------
install(TARGETS heraldd RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# -- systemd unit ----------------------------------------------------------------------------
# The unit in the tree says /usr/bin/heraldd. The prefix is only known at install time
# (`--prefix`, or /usr when CPack stages the package), so the installed copy is written then.
if(IS_ABSOLUTE "${CMAKE_INSTALL_BINDIR}")
  set(HD_BINDIR_EXPR "${CMAKE_INSTALL_BINDIR}")
else()
  set(HD_BINDIR_EXPR "\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}")
endif()
file(CONFIGURE OUTPUT ${HD_PKG_DIR}/unit-install.cmake @ONLY CONTENT [[
file(READ "@CMAKE_SOURCE_DIR@/systemd/heraldd.service" unit)
string(REPLACE "/usr/bin/heraldd" "@HD_BINDIR_EXPR@/heraldd" unit "${unit}")
file(WRITE "@HD_PKG_DIR@/heraldd.service" "${unit}")
]])
install(SCRIPT ${HD_PKG_DIR}/unit-install.cmake)
install(FILES ${HD_PKG_DIR}/heraldd.service ${CMAKE_SOURCE_DIR}/systemd/heraldd.socket
        DESTINATION lib/systemd/system)

# -- configuration ---------------------------------------------------------------------------
# Like nginx's `make install`: an existing /etc/herald/heraldd.json is the admin's and is never
# overwritten; the new default goes next to it as heraldd.json.new. The .deb always stages a
# fresh tree, and dpkg's conffile handling takes over from there.
file(CONFIGURE OUTPUT ${HD_PKG_DIR}/config-install.cmake @ONLY CONTENT [[
set(dest "$ENV{DESTDIR}@HD_CONFIG_DIR@/heraldd.json")
set(src "@CMAKE_SOURCE_DIR@/config/heraldd.json")
set(name heraldd.json)
if(EXISTS "${dest}")
  execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${dest}" "${src}"
                  RESULT_VARIABLE differs)
  if(differs)
    message(STATUS "Keeping ${dest}; the new default is ${dest}.new")
    set(name heraldd.json.new)
  endif()
endif()
# No return() here: this file is included by cmake_install.cmake.
file(INSTALL "${src}" DESTINATION "@HD_CONFIG_DIR@" RENAME "${name}"
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ)
]])
install(SCRIPT ${HD_PKG_DIR}/config-install.cmake)

# -- copyright -------------------------------------------------------------------------------
# Debian policy wants /usr/share/doc/<package>/copyright in every package.
set(HD_LICENSE_TEXT [[
Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.]])
if(EXISTS ${CMAKE_SOURCE_DIR}/LICENSE)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/LICENSE)
  file(READ ${CMAKE_SOURCE_DIR}/LICENSE HD_LICENSE_TEXT)
  string(STRIP "${HD_LICENSE_TEXT}" HD_LICENSE_TEXT)
endif()
# DEP-5 layout: license lines indented by one space, empty lines as " .".
string(REGEX REPLACE "\n\n" "\n.\n" HD_LICENSE_DEP5 "${HD_LICENSE_TEXT}")
string(REGEX REPLACE "\n" "\n " HD_LICENSE_DEP5 "${HD_LICENSE_DEP5}")
file(CONFIGURE OUTPUT ${HD_PKG_DIR}/copyright @ONLY CONTENT [[
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: herald

Files: *
Copyright: The Herald contributors
License: MIT
 @HD_LICENSE_DEP5@
]])
install(FILES ${HD_PKG_DIR}/copyright DESTINATION ${CMAKE_INSTALL_DOCDIR})

# -- Debian package --------------------------------------------------------------------------
set(HERALD_DEB_MAINTAINER "Herald maintainers <herald@example.org>"
    CACHE STRING "Maintainer field of the .deb")

# dpkg marks files under /etc as conffiles only when told.
file(WRITE ${HD_PKG_DIR}/conffiles "${HD_CONFIG_DIR}/heraldd.json\n")
set(HD_DEB_CONTROL ${HD_PKG_DIR}/conffiles)
foreach(script postinst prerm postrm)
  # Copied so the mode is right whatever the checkout did to it.
  file(COPY ${CMAKE_SOURCE_DIR}/systemd/debian/${script} DESTINATION ${HD_PKG_DIR}
       FILE_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
                        WORLD_READ WORLD_EXECUTE)
  list(APPEND HD_DEB_CONTROL ${HD_PKG_DIR}/${script})
endforeach()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             ${CMAKE_SOURCE_DIR}/systemd/debian/postinst ${CMAKE_SOURCE_DIR}/systemd/debian/prerm
             ${CMAKE_SOURCE_DIR}/systemd/debian/postrm)
# CPack calls ldconfig only from maintainer scripts it writes itself, and we bring our own:
# libherald's symlinks and the linker cache are refreshed through dpkg's ldconfig trigger.
if(EXISTS ${CMAKE_SOURCE_DIR}/clients/CMakeLists.txt)
  file(WRITE ${HD_PKG_DIR}/triggers "activate-noawait ldconfig\n")
  list(APPEND HD_DEB_CONTROL ${HD_PKG_DIR}/triggers)
else()
  file(REMOVE ${HD_PKG_DIR}/triggers)
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME herald)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_VENDOR "The Herald contributors")
set(CPACK_PACKAGE_CONTACT "${HERALD_DEB_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "push-notification broker for WebSocket, SSE and HTTP")
# CPack puts the summary on the Description: line; this is the extended text under it.
set(HD_DEB_DESCRIPTION
    "heraldd fans out events published over HTTP or WebSocket to subscribers on\n"
    "WebSocket, Server-Sent Events and long polling, keeps per-topic history in\n"
    "SQLite, and runs as a sandboxed systemd service.")
if(EXISTS ${CMAKE_SOURCE_DIR}/clients/CMakeLists.txt)
  list(APPEND HD_DEB_DESCRIPTION
       "\nAlso included: the herald command-line client and the libherald C library.")
endif()
string(CONCAT HD_DEB_DESCRIPTION ${HD_DEB_DESCRIPTION})
# Everything is staged under DESTDIR so that /etc/herald lands in the package, never on the
# build machine.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE
    GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)

set(CPACK_DEBIAN_PACKAGE_NAME herald)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${HERALD_DEB_MAINTAINER}")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION "${HD_DEB_DESCRIPTION}")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# Library dependencies come from dpkg-shlibdeps. The libuv event-loop plugin of libwebsockets
# is dlopen()ed at run time, so no ELF file names it: it is listed by hand.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# (Debian's libwebsockets reports its version as "4.1.6-"; the package version is 4.1.6-N.)
string(REGEX MATCH "^[0-9]+(\\.[0-9]+)*" HD_LWS_VERSION "${LWS_VERSION}")
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libwebsockets-evlib-uv (>= ${HD_LWS_VERSION})")
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${HD_DEB_CONTROL})
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION TRUE)

# `make package_source`: the tree without build directories or VCS data.
set(CPACK_SOURCE_GENERATOR TGZ)
set(CPACK_SOURCE_IGNORE_FILES "/[.]git/" "/build[^/]*/" "/_build[^/]*/" "__pycache__")

include(CPack)
