#!/usr/bin/env bash
# The npm package's install step (package.json "install"): builds the native addon on the host it
# is installed on, against that host's rdma-core, liburing and Node, with libvhost-user fetched
# and checked exactly as a checkout's set-up does (scripts/libvhost-user.sh). The tarball holds
# no binary and no third-party source. Only the product addon is built (build-native.mjs
# --addon-only): no test addon, no tools, no libblkio.
#
# In a checkout (a .git beside package.json) it does nothing: scripts/setup.sh and
# `npm run build` build there, and a plain `npm ci` must not start a native build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export log_tag="ibnbd-vhost install"
. "$here/setup-common.sh"   # $cache, log

if [ -e "$root/.git" ]; then
  log "a checkout: nothing built here (bash scripts/setup.sh && npm run build do)"
  exit 0
fi

# Everything the build needs, each missing piece named with the Debian package that brings it,
# all at once, before anything is fetched or compiled.
missing=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || missing+=("the command '$1' (Debian: $2)"); }
need_cmd c++ build-essential
need_cmd make build-essential
need_cmd python3 python3
need_cmd pkg-config pkg-config
need_cmd xz xz-utils
need_cmd sha256sum coreutils
if command -v pkg-config >/dev/null 2>&1; then
  for lib in libibverbs:libibverbs-dev librdmacm:librdmacm-dev liburing:liburing-dev; do
    pkg-config --exists "${lib%%:*}" || missing+=("the library ${lib%%:*} (pkg-config ${lib%%:*}; Debian: ${lib#*:})")
  done
fi
if command -v c++ >/dev/null 2>&1; then
  for h in infiniband/verbs.h:libibverbs-dev rdma/rdma_cma.h:librdmacm-dev liburing.h:liburing-dev; do
    printf '#include <%s>\n' "${h%%:*}" | c++ -fsyntax-only -x c++ - 2>/dev/null || missing+=("the header <${h%%:*}> (Debian: ${h#*:})")
  done
fi
# Node's own headers (node_api.h, and the OpenSSL headers of the OpenSSL inside Node, which the
# session authentication links against); node-gyp is told to use them, never to download them
nodedir="${npm_config_nodedir:-$(cd "$(dirname "$(readlink -f "$(command -v node)")")/.." && pwd)}"
for h in node_api.h openssl/hmac.h; do
  [ -f "$nodedir/include/node/$h" ] || missing+=("Node's header include/node/$h under $nodedir (a Node with its headers, or npm_config_nodedir naming one)")
done
if ((${#missing[@]})); then
  log "cannot build the native addon; missing:"
  for m in "${missing[@]}"; do printf '  - %s\n' "$m" >&2; done
  exit 1
fi

bash "$here/libvhost-user.sh" "$root"
log "building the native addon (a minute or two)"
npm_config_nodedir="$nodedir" node "$here/build-native.mjs" --addon-only
log "built $root/native/build/Release/ibnbd.node"
