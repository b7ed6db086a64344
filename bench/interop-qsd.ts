// The stack a user would build instead of our client daemon on an RDMA host, as `bench --interop`
// runs it in its guest: the kernel's rnbd_client maps the device, and qemu-storage-daemon (the
// host's binary, seen by the hostroot guest) exports that /dev/rnbdN as a vhost-user-blk socket.
// Shell that starts it in the background and waits for its socket, and shell that stops it.
import { vhostUserBlkExportArg } from '../harness/qemu/qsd.js';
import { GUEST_OUT } from './guest-bench.js';

/**
 * How qsd reads the device: O_DIRECT (no second page cache in front of the kernel client, as the
 * io_uring load generator on /dev/rnbdN opens it) and QEMU's io_uring backend, the same kernel
 * interface the load generator uses. aio=native (Linux AIO) works in the guest's QEMU 7.2 as well;
 * docs/performance.md ("Kernel RNBD side by side") has the one-off comparison behind this choice.
 */
export const QSD_BLOCKDEV_OPTIONS = 'cache.direct=on,aio=io_uring';

/**
 * Starts qemu-storage-daemon on the block device in shell variable `devVar` (read-only: the
 * kernel client maps it `ro`, and every workload only reads), exporting it at `socket` with one
 * queue and no iothread (the main loop serves it, without polling: on one vCPU a polling thread
 * would take the CPU from everything else, and neither our client nor the load generator polls).
 * Leaves its pid in $QSD, the socket in $<variable>, its version in GUEST_OUT/qsd-version.txt and
 * its stderr in GUEST_OUT/qsd.log; exits `failCode` when it cannot start or its socket does not
 * appear within 60 s.
 */
export function startQsdShell(devVar: string, socket: string, variable: string, failCode: number): string {
  const exportArg = vhostUserBlkExportArg({ nodeName: 'd0', socket, writable: false, numQueues: 1 });
  return `command -v qemu-storage-daemon > /dev/null || exit ${failCode}
qemu-storage-daemon --version 2>&1 | head -1 > ${GUEST_OUT}/qsd-version.txt
qemu-storage-daemon --blockdev "driver=host_device,node-name=d0,filename=${devVar},read-only=on,${QSD_BLOCKDEV_OPTIONS}" \\
  --export "${exportArg}" 2> ${GUEST_OUT}/qsd.log &
QSD=$!
i=0; while [ ! -S ${socket} ]; do i=$((i+1)); { [ $i -gt 600 ] || ! kill -0 $QSD 2>/dev/null; } && exit ${failCode}; sleep 0.1; done
${variable}=${socket}
step "qsd exports ${devVar} at ${socket}"`;
}

/** Ends the qemu-storage-daemon of `startQsdShell` and waits for it (the device is closed afterwards). */
export const STOP_QSD_SHELL = 'kill -TERM $QSD; wait $QSD';
