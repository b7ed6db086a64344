#!/usr/bin/env bash
# libvhost-user from Debian's qemu source package, pinned by the sha256 of its orig tarball:
# fetched once into the cache, checked, unpacked, and linked (git-ignored, never packed) at
# <package root>/native/third_party/libvhost-user, where native/binding.gyp compiles it.
# Run by scripts/setup.sh in a checkout and by scripts/install.sh when the npm package is
# installed, so both builds get the same source the same way. A second run downloads nothing.
#
#   libvhost-user.sh [PACKAGE_ROOT]   (default: the folder above this script)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "${1:-$here/..}" && pwd)"
. "$here/setup-common.sh"

# Security uploads change the Debian revision of qemu, never its orig tarball, so the tarball's
# hash is the pin and the revision is only the first one we try.
QEMU_SRC_VERSION="1:7.2+dfsg-7+deb12u18"
QEMU_ORIG="qemu_7.2+dfsg.orig.tar.xz"
QEMU_ORIG_SHA256="91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f"

lvu="$cache/libvhost-user"
if [ ! -f "$lvu/.ok" ] || [ "$(cat "$lvu/.ok")" != "$QEMU_ORIG_SHA256" ]; then
  srcdir="$cache/qemu-src"
  mkdir -p "$srcdir"
  if [ ! -f "$srcdir/$QEMU_ORIG" ] || ! echo "$QEMU_ORIG_SHA256  $srcdir/$QEMU_ORIG" | sha256sum -c --quiet - 2>/dev/null; then
    prepare_private_list src "deb-src @SIGNED@ @URI@ bookworm main"
    log "downloading Debian's qemu source package"
    ( cd "$srcdir" && rm -f ./*.dsc ./*.debian.tar.xz && \
      { apt_private src source --download-only -qq "qemu=$QEMU_SRC_VERSION" 2>/dev/null || \
        apt_private src source --download-only -qq qemu; } )
  fi
  echo "$QEMU_ORIG_SHA256  $srcdir/$QEMU_ORIG" | sha256sum -c --quiet - || {
    log "sha256 mismatch for $QEMU_ORIG"; exit 1; }
  log "unpacking subprojects/libvhost-user"
  rm -rf "$lvu.tmp" && mkdir -p "$lvu.tmp"
  tar --no-same-owner -xJf "$srcdir/$QEMU_ORIG" -C "$lvu.tmp" --strip-components=1 --wildcards \
    '*/subprojects/libvhost-user/*' '*/include/qemu/atomic.h' '*/include/qemu/compiler.h' \
    '*/include/standard-headers/linux/*'
  rm -rf "$lvu" && mv "$lvu.tmp" "$lvu"
  dsc="$(ls "$srcdir"/qemu_*.dsc 2>/dev/null | head -n1)"
  dsc="${dsc##*/}"; dsc="${dsc#qemu_}"; echo "qemu ${dsc%.dsc} ($QEMU_ORIG sha256 ${QEMU_ORIG_SHA256:0:16}…)" > "$lvu/.version"
  echo "$QEMU_ORIG_SHA256" > "$lvu/.ok"
  # the orig tarball is kept for the hash check; the .dsc/.debian.tar are not needed
fi

mkdir -p "$root/native/third_party"
ln -sfn "$lvu/subprojects/libvhost-user" "$root/native/third_party/libvhost-user"
