// The Linux kernel's own RNBD/RTRS as a test peer inside a harness guest: the guest options that
// bring soft-RoCE and the five out-of-tree modules (built by scripts/setup.sh, step 4b) into the
// guest, and shell functions that drive the kernel server and client through their sysfs files.
// Builds on harness.ts (runGuest/startGuest); see harness/qemu/README-rnbd.md.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { IbnbdError } from '../../src/errors.js';
import { cacheDir } from './guest-kernel.js';
import type { GuestOptions } from './harness.js';
import type { ShareSpec } from './qemu-args.js';

/** The modules, in load order (rtrs-core first; each rnbd half after its rtrs half). */
export const KERNEL_RNBD_MODULES = ['rtrs-core', 'rtrs-server', 'rnbd-server', 'rtrs-client', 'rnbd-client'] as const;

/**
 * Guest kernel modules (loaded by the harness's /init, dependencies from modules.dep) for soft-RoCE
 * on eth0 and rdma_cm. crc32_generic comes first: rdma_rxe asks the crypto API for crc32 and the
 * guest has no module auto-loading. rdma_ucm lets userspace librdmacm programs run next to the peer.
 */
export const RXE_MODULES = ['crc32_generic', 'rdma_rxe', 'rdma_cm', 'rdma_ucm'];
/** Backing devices for the kernel server: brd (/dev/ram0..15, 16 MiB each by default) and loop. */
export const BACKING_MODULES = ['brd', 'loop'];

/** Where the guest sees the .ko files (a 9p share of the cache; the guest's /root and /tmp are its own tmpfs). */
export const GUEST_KO_DIR = '/run/kernel-rnbd';
/** The guest's own eth0 address: server and client run in one guest, over rxe0 loopback. */
export const GUEST_IP = '10.0.2.15';

/** $IBNBD_CACHE_DIR/guest-kernel/rnbd, after checking set-up built all five modules. */
export function kernelRnbdDir(): string {
  const dir = join(cacheDir(), 'guest-kernel', 'rnbd');
  for (const m of KERNEL_RNBD_MODULES) {
    if (!existsSync(join(dir, `${m}.ko`))) {
      throw new IbnbdError('ENOENT', `${m}.ko missing in ${dir}: run scripts/setup.sh (it builds the kernel rnbd/rtrs modules)`);
    }
  }
  return dir;
}

export interface KernelRnbdGuestInput {
  /** extra writable shares (test files in and out) */
  shares?: ShareSpec[];
  /** extra guest modules (null_blk, ...) */
  modules?: string[];
}

/**
 * The harness options a kernel-peer guest needs: hostroot mode (the `rdma` tool and busybox come from
 * the host), the slirp NIC rxe0 sits on, the RDMA and backing-device modules, and the .ko share.
 * Spread it into runGuest/startGuest options next to script and timeoutMs.
 */
export function kernelRnbdGuestOptions(i: KernelRnbdGuestInput = {}): Omit<GuestOptions, 'script' | 'timeoutMs'> {
  return {
    mode: 'hostroot',
    netdev: true,
    modules: [...RXE_MODULES, ...BACKING_MODULES, ...(i.modules ?? [])],
    shares: [{ hostPath: kernelRnbdDir(), tag: 'kernel_rnbd', guestPath: GUEST_KO_DIR }, ...(i.shares ?? [])],
  };
}

export interface KernelRnbdScriptInput {
  /**
   * rtrs-server's buffers per session: it allocates this many max_chunk_size (128 KiB) chunks for
   * every session up front, 64 MiB at the default 512; small guests need a small number.
   */
  sessQueueDepth?: number;
  /** rnbd-server's dev_search_path: the prefix of every device_path a client asks for */
  devSearchPath?: string;
}

function shellWord(s: string, what: string): string {
  if (!/^[A-Za-z0-9_./%-]+$/.test(s)) throw new IbnbdError('EINVAL', `${what} must be a plain path word: ${s}`);
  return s;
}

/**
 * Shell functions (POSIX sh, prepend to a guest script). Every wait is bounded; each function
 * returns non-zero on failure so scripts can `|| exit`. RNBD_SERVER_IP (this guest's eth0) and
 * RNBD_PORT (1234, the kernel server's default) say where rnbd_map dials; a script may change them
 * (e.g. to map from our userspace server on another port).
 *   rxe_up                     rdma link add rxe0 on eth0, wait for ACTIVE
 *   rnbd_server_load           insmod rtrs-core, rtrs-server, rnbd-server (search path, queue depth)
 *   rnbd_client_load           insmod rtrs-core, rtrs-client, rnbd-client
 *   rnbd_map SESS DEV [MODE]   map_device from this guest's server; prints /dev/rnbdN, or the errno
 *                              text on stderr ("Operation not permitted") and fails
 *   rnbd_dev SESS DEV          the /dev/rnbdN of an existing mapping
 *   rnbd_unmap /dev/rnbdN [normal|force]
 *   rnbd_loop FILE             losetup a file as a backing device; prints /dev/loopN. Keep FILE in the
 *                              guest's tmpfs, not on a 9p share: see README-rnbd.md
 *   rnbd_srv_sess DEV SESS     the server's sysfs folder of that session's open of DEV
 *   rnbd_srv_wait_gone DEV SESS  wait (5 s) until the server dropped it
 */
export function kernelRnbdPrelude(i: KernelRnbdScriptInput = {}): string {
  const qd = i.sessQueueDepth ?? 64;
  if (!Number.isInteger(qd) || qd < 1 || qd > 65535) throw new IbnbdError('EINVAL', 'sessQueueDepth must be in 1..65535');
  const searchPath = shellWord(i.devSearchPath ?? '/dev', 'devSearchPath');
  return `
RNBD_KO=${GUEST_KO_DIR}
RNBD_SERVER_IP=${GUEST_IP}
RNBD_PORT=1234
rxe_up() {
  rdma link add rxe0 type rxe netdev eth0 || return 1
  _i=0
  while [ $_i -lt 100 ]; do
    rdma link show rxe0/1 2>/dev/null | grep -q 'state ACTIVE' && return 0
    sleep 0.1; _i=$((_i + 1))
  done
  echo "rxe_up: rxe0 not ACTIVE after 10 s"; return 1
}
rnbd_insmod() {
  _m=$1; shift
  [ -d "/sys/module/$(echo "$_m" | tr - _)" ] && return 0
  busybox insmod "$RNBD_KO/$_m.ko" "$@"
}
rnbd_server_load() {
  rnbd_insmod rtrs-core && rnbd_insmod rtrs-server sess_queue_depth=${qd} && rnbd_insmod rnbd-server dev_search_path=${searchPath}
}
rnbd_client_load() {
  rnbd_insmod rtrs-core && rnbd_insmod rtrs-client && rnbd_insmod rnbd-client
}
rnbd_dev() {
  _l=/sys/class/rnbd-client/ctl/devices/$(echo "$2" | tr / !)@$1
  [ -e "$_l" ] || return 1
  _d=$(readlink -f "$_l"); echo "/dev/\${_d##*/}"
}
# /bin/echo, not the shell's builtin: dash reports every failed write as "I/O error", coreutils
# and busybox print the errno the sysfs store returned (EPERM, EEXIST, ...)
rnbd_map() {
  # dest_port before path: the kernel parses each path= with the port known at that point
  /bin/echo "dest_port=$RNBD_PORT sessname=$1 path=ip:$RNBD_SERVER_IP device_path=$2 access_mode=\${3:-rw}" > /sys/class/rnbd-client/ctl/map_device || return 1
  rnbd_dev "$1" "$2"
}
rnbd_unmap() {
  /bin/echo "\${2:-normal}" > "/sys/block/\${1##*/}/rnbd/unmap_device"
}
rnbd_loop() {
  losetup -f --show "$1"
}
rnbd_srv_sess() {
  echo "/sys/class/rnbd-server/ctl/devices/$(echo "$1" | tr / !)/sessions/$2"
}
rnbd_srv_wait_gone() {
  _i=0
  while [ -e "$(rnbd_srv_sess "$1" "$2")" ]; do
    [ $_i -ge 50 ] && return 1
    sleep 0.1; _i=$((_i + 1))
  done
}
`;
}
