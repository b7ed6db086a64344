#!/usr/bin/env bash
# Idempotent set-up for ibnbd-vhost: everything a fresh Debian 12 machine needs to build, test
# and run the demo. A second run checks stamps and hashes and touches nothing.
#
#   IBNBD_CACHE_DIR  where fetched sources, the guest kernel and libblkio debs live
#                    (default: ~/.cache/ibnbd-vhost; outside the work tree, never committed)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
. "$here/setup-common.sh"   # $cache, log, the private apt lists (prepare_private_list, apt_private)

# ---------------------------------------------------------------------------------------------
# Pinned fetched sources (libvhost-user's pin is in scripts/libvhost-user.sh).
LIBBLKIO_VERSION="1.5.0"

APT_PACKAGES=(
  build-essential pkg-config python3 xz-utils ca-certificates
  libibverbs-dev librdmacm-dev ibverbs-providers rdmacm-utils ibverbs-utils perftest fio
  liburing-dev
  qemu-system-x86 qemu-utils
  busybox-static cpio kmod e2fsprogs iproute2
  libvirt-clients libxml2-utils libvirt-daemon libvirt-daemon-driver-qemu
  systemd
  prometheus
)

# ---------------------------------------------------------------------------------------------
# 1. Debian packages: apt-get update only when something is missing.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# libvirt's QEMU driver looks its user up before it reads its config (tests/vm/libvirt.test.ts
# runs QEMU as root all the same): the user and groups libvirt-daemon-system would have made
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

# ---------------------------------------------------------------------------------------------
# 2. libvhost-user from Debian's qemu source package (orig tarball pinned by sha256).
# the addon build (native/binding.gyp) compiles it from native/third_party/libvhost-user, a
# git-ignored link into the cache; an installed package gets it the same way (scripts/install.sh)
bash "$here/libvhost-user.sh" "$root"

# ---------------------------------------------------------------------------------------------
# 3. libblkio 1.5.0 from Debian 13 (not in bookworm): a real vhost-user-blk client for tests.
if ! dpkg-query -W -f='${Version}' libblkio-dev 2>/dev/null | grep -q "^$LIBBLKIO_VERSION"; then
  prepare_private_list trixie "deb @SIGNED@ @URI@ trixie main"
  debs="$cache/libblkio"
  mkdir -p "$debs"
  log "downloading libblkio $LIBBLKIO_VERSION from Debian 13"
  ( cd "$debs" && apt_private trixie download -qq "libblkio1=$LIBBLKIO_VERSION*" "libblkio-dev=$LIBBLKIO_VERSION*" 2>/dev/null || \
    apt_private trixie download -qq libblkio1 libblkio-dev )
  dpkg -i "$debs"/libblkio1_*.deb "$debs"/libblkio-dev_*.deb >/dev/null
fi

# ---------------------------------------------------------------------------------------------
# 4. Guest kernel for tests/qemu: the linux-image-6.1.0-N-amd64 that linux-image-amd64 names, at
#    an upload whose linux-headers-6.1.0-N-amd64 and linux-source-6.1 exist too (step 4b builds the
#    kernel's rnbd/rtrs modules from them, and only the same upload gives matching vermagic/CRCs).
gk="$cache/guest-kernel"
has_version() { apt-cache madison "$1" 2>/dev/null | awk -v v="$2" '$3 == v { f = 1 } END { exit !f }'; }
kernel_upload() {
  # prints "linux-image-<kver> <version>"
  local pkg ver v p
  pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
  [ -n "$pkg" ] || return 1
  ver="$(apt-cache policy "$pkg" | awk '/Candidate:/ { print $2; exit }')"
  if has_version "linux-headers-${pkg#linux-image-}" "$ver" && has_version linux-source-6.1 "$ver"; then
    echo "$pkg $ver"; return 0
  fi
  # the newest source upload that still has an image and headers of the same version
  for v in $(apt-cache madison linux-source-6.1 | awk '{ print $3 }'); do
    for p in $(apt-cache pkgnames linux-image-6.1.0- | grep -E '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -t- -k4,4nr); do
      if has_version "$p" "$v" && has_version "linux-headers-${p#linux-image-}" "$v"; then echo "$p $v"; return 0; fi
    done
  done
  return 1
}
image_version() {
  # uploads before this step recorded it carry it only in the changelog ("Sign kernel from linux V")
  [ -f "$gk/version" ] || zcat "$gk/root/usr/share/doc/linux-image-$(cat "$gk/kver")/changelog.gz" 2>/dev/null \
    | awk 'NR == 1 { v = $2; gsub(/[()]/, "", v) } /Sign kernel from linux / { v = $NF } END { print v }' > "$gk/version"
  cat "$gk/version"
}
fetch_guest_kernel() {
  local pkg ver kver
  read -r pkg ver < <(kernel_upload) || true
  if [ -z "${pkg:-}" ]; then apt-get update -qq; read -r pkg ver < <(kernel_upload) || true; fi
  [ -n "${pkg:-}" ] || { log "cannot resolve a guest kernel with headers and source of the same upload"; exit 1; }
  log "downloading guest kernel $pkg=$ver"
  rm -rf "$gk.tmp" && mkdir -p "$gk.tmp/deb"
  ( cd "$gk.tmp/deb" && apt-get -o APT::Sandbox::User=root download -qq "$pkg=$ver" )
  dpkg-deb -x "$gk.tmp/deb"/*.deb "$gk.tmp/root"
  kver="${pkg#linux-image-}"
  /bin/busybox depmod -b "$gk.tmp/root" "$kver" 2>/dev/null || depmod -b "$gk.tmp/root" "$kver"
  echo "$kver" > "$gk.tmp/kver"
  echo "$ver" > "$gk.tmp/version"
  rm -rf "$gk.tmp/deb"
  rm -rf "$gk" && mv "$gk.tmp" "$gk"
  echo "$pkg" > "$gk/.ok"
}
[ -f "$gk/.ok" ] || fetch_guest_kernel

# 4b. The kernel's own RNBD/RTRS modules for that guest kernel, the peer of the interop tests
#     (scripts/build-kernel-rnbd.sh). Cached next to the kernel, never committed; the stamp names the
#     upload and the recipe, so a second run builds nothing.
rnbd_recipe="$(sha256sum "$here/build-kernel-rnbd.sh" | cut -c1-16)"
rnbd_stamp() { echo "$(cat "$gk/kver") $(image_version) $rnbd_recipe"; }
if [ ! -f "$gk/rnbd/.ok" ] || [ "$(cat "$gk/rnbd/.ok")" != "$(rnbd_stamp)" ]; then
  kver="$(cat "$gk/kver")"; ver="$(image_version)"
  if ! { has_version "linux-headers-$kver" "$ver" && has_version linux-source-6.1 "$ver"; }; then
    apt-get update -qq
    if ! { has_version "linux-headers-$kver" "$ver" && has_version linux-source-6.1 "$ver"; }; then
      # the cached image's upload left the archive: move kernel, headers and source to one that exists
      log "guest kernel $kver=$ver has no headers/source of the same upload any more; re-resolving"
      fetch_guest_kernel
      kver="$(cat "$gk/kver")"; ver="$(image_version)"
    fi
  fi
  bash "$here/build-kernel-rnbd.sh" "$kver" "$ver" "$gk/rnbd"
  rnbd_stamp > "$gk/rnbd/.ok"
fi

# ---------------------------------------------------------------------------------------------
# 5. Node dependencies (only when missing or when package.json changed).
cd "$root"
if [ -f package.json ]; then
  stamp="node_modules/.ibnbd-setup"
  deps_hash() { { cat package.json; cat package-lock.json 2>/dev/null || true; } | sha256sum | cut -c1-64; }
  want="$(deps_hash)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing npm dependencies"
    if [ -f package-lock.json ]; then npm ci --ignore-scripts --no-audit --no-fund >/dev/null
    else npm install --ignore-scripts --no-audit --no-fund >/dev/null; fi
    want="$(deps_hash)"
    echo "$want" > "$stamp"
  fi
fi
log "ok (cache: $cache)"
