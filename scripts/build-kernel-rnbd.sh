#!/usr/bin/env bash
# Builds the Linux kernel's own RNBD/RTRS modules (rtrs-core, rtrs-client, rtrs-server,
# rnbd-client, rnbd-server) for the test guest kernel, out of tree and without any source change:
# Debian builds none of them, and the interop tests need the real kernel peer.
#
#   build-kernel-rnbd.sh KVER VERSION OUTDIR
#
# KVER is the guest kernel's ABI name (6.1.0-N-amd64) and VERSION the Debian upload of its image;
# linux-headers-KVER and linux-source-6.1 must be that same upload so that vermagic and the
# modversions CRCs match the guest kernel. Called by scripts/setup.sh, which checks that stamp.
set -euo pipefail

kver="$1" version="$2" out="$3"
log() { printf 'setup: %s\n' "$*" >&2; }
work="$out.build"

# Headers of exactly this upload (a normal Debian package; apt pulls -common and linux-kbuild).
if [ "$(dpkg-query -W -f='${Status} ${Version}' "linux-headers-$kver" 2>/dev/null)" != "install ok installed $version" ]; then
  log "installing linux-headers-$kver=$version"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "linux-headers-$kver=$version" "linux-headers-${kver%-amd64}-common=$version" >/dev/null
fi
headers="/usr/src/linux-headers-$kver"
[ -f "$headers/Module.symvers" ] || { log "no $headers/Module.symvers"; exit 1; }

# Source: only the two driver folders, streamed out of the package's tarball; the 140 MB package
# is downloaded into the build folder, not installed, and removed once the folders are out.
rm -rf "$work" && mkdir -p "$work/deb" "$work/tree"
log "downloading linux-source-6.1=$version (only drivers/infiniband/ulp/rtrs and drivers/block/rnbd are kept)"
( cd "$work/deb" && apt-get -o APT::Sandbox::User=root download -qq "linux-source-6.1=$version" )
dpkg-deb --fsys-tarfile "$work"/deb/linux-source-6.1_*.deb \
  | tar -xO ./usr/src/linux-source-6.1.tar.xz \
  | tar -xJ -C "$work/tree" --strip-components=1 --wildcards \
      'linux-source-6.1/drivers/infiniband/ulp/rtrs/*' 'linux-source-6.1/drivers/block/rnbd/*'
rm -rf "$work/deb"
tree="$work/tree"
mv "$tree/drivers/infiniband/ulp/rtrs" "$tree/drivers/block/rnbd" "$tree/" && rm -rf "$tree/drivers"
[ -f "$tree/rtrs/Makefile" ] && [ -f "$tree/rnbd/Makefile" ] || { log "driver folders missing from linux-source-6.1"; exit 1; }

# Kbuild files: the in-tree Makefiles with each config-gated object made unconditional, and rnbd's
# include of rtrs pointed at the sibling folder instead of the (absent) full source tree.
printf 'obj-m += rtrs/ rnbd/\n' > "$tree/Kbuild"
for d in rtrs rnbd; do
  sed -e 's/obj-\$(CONFIG_[A-Z0-9_]*)/obj-m/g' \
      -e 's|\$(srctree)/drivers/infiniband/ulp/rtrs|$(src)/../rtrs|g' \
      "$tree/$d/Makefile" > "$tree/$d/Kbuild"
  rm "$tree/$d/Makefile"
done

log "building rtrs/rnbd modules against $headers"
make -s -C "$headers" M="$tree" -j"$(nproc)" modules >&2

mkdir -p "$out.tmp"
for m in rtrs/rtrs-core rtrs/rtrs-client rtrs/rtrs-server rnbd/rnbd-client rnbd/rnbd-server; do
  [ -f "$tree/$m.ko" ] || { log "missing $m.ko after the build"; exit 1; }
  # debug info makes them ~10x bigger and the guest loads them over 9p
  strip --strip-debug -o "$out.tmp/${m#*/}.ko" "$tree/$m.ko"
done
got="$(modinfo -F vermagic "$out.tmp/rtrs-core.ko")"
case "$got" in "$kver "*) ;; *) log "vermagic '$got' does not name $kver"; exit 1 ;; esac
rm -rf "$out" && mv "$out.tmp" "$out"
rm -rf "$work"
