// What runs inside the guest: /init (busybox sh, PID 1) and the helper functions prepended to
// every test script. The guest talks to the host with marker lines on the console (ttyS0) and
// reads host lines from a second serial port (ttyS1) opened once by /init as fd 3.

/** Marker lines the guest prints on its console; the harness parses them out of the serial log. */
export const MARK = {
  begin: '@@IBNBD-BEGIN@@',
  exit: (code: number) => `@@IBNBD-EXIT ${code}@@`,
  exitRe: /^@@IBNBD-EXIT (\d+)@@$/,
  mark: (text: string) => `@@IBNBD-MARK ${text}@@`,
  markRe: /^@@IBNBD-MARK (.*)@@$/,
  fail: (what: string) => `@@IBNBD-FAIL ${what}@@`,
  failRe: /^@@IBNBD-FAIL (.*)@@$/,
};

/**
 * Shell functions available to every guest script (POSIX sh: busybox ash in initramfs mode, the
 * host's /bin/sh in hostroot mode).
 *   mark TEXT        tell the host TEXT happened (GuestHandle.waitForMarker(TEXT) resolves)
 *   host_wait LINE   block until the host sends exactly LINE (GuestHandle.sendLine(LINE))
 *   host_read VAR    read the next host line into VAR
 * The host must only send after a mark the guest printed once it is ready to read: a serial
 * port drops what arrives before the guest opened it.
 */
export const SCRIPT_PRELUDE = `
mark() { echo "@@IBNBD-MARK $*@@" >/dev/console; }
host_read() { IFS= read -r "$1" <&3; }
host_wait() { while IFS= read -r _hw_line <&3; do [ "$_hw_line" = "$1" ] && return 0; done; return 1; }
`;

/**
 * /init. Per-run settings come from /harness/ (a second cpio appended per run), so the big
 * archive with busybox and the modules is built once and cached.
 *   /harness/mode     initramfs | hostroot
 *   /harness/net      1 to configure eth0 (slirp, 10.0.2.15/24)
 *   /harness/shares   lines "TAG rw|ro PATH": 9p shares mounted at PATH; ro ones read-only and
 *                     cached (cache=loose), like hostroot
 *   /harness/script.sh
 */
export const INIT_SCRIPT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
fail() { echo "@@IBNBD-FAIL $*@@"; poweroff -f; sleep 60; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  [ -n "$m" ] && { insmod "/lib/modules/$m.ko" || fail "insmod $m"; }
done < /etc/harness-modules
exec 3<>/dev/ttyS1 && stty -F /dev/ttyS1 raw -echo || fail "control port ttyS1"
ip link set lo up
if [ "$(cat /harness/net)" = 1 ]; then
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 || fail "eth0"
fi
mode=$(cat /harness/mode)
R=
if [ "$mode" = hostroot ]; then
  R=/newroot
  mkdir -p $R
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R || fail "mount hostroot"
  mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && mount -t devtmpfs devtmpfs $R/dev || fail "mount api fs"
  mkdir -p $R/dev/pts $R/dev/shm
  mount -t devpts devpts $R/dev/pts && mount -t tmpfs tmpfs $R/dev/shm || fail "mount dev fs"
  for d in tmp run root; do mount -t tmpfs tmpfs $R/$d || fail "tmpfs $d"; done
  chmod 1777 $R/tmp
fi
while read -r tag access path; do
  [ -n "$tag" ] || continue
  opts=trans=virtio,version=9p2000.L,msize=512000
  [ "$access" = ro ] && opts=$opts,ro,cache=loose
  mkdir -p "$R$path" && mount -t 9p -o $opts "$tag" "$R$path" || fail "share $tag"
done < /harness/shares
mkdir -p $R/run/harness && cp /harness/script.sh $R/run/harness/script.sh || fail "script"
echo "@@IBNBD-BEGIN@@"
if [ "$mode" = hostroot ]; then
  chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \\
    /bin/sh /run/harness/script.sh </dev/null 2>&1
else
  sh /run/harness/script.sh </dev/null 2>&1
fi
rc=$?
sync
echo "@@IBNBD-EXIT $rc@@"
# poweroff -f does not wait for the UART: after a lot of console output the marker could still be
# queued in the tty when the machine stops. Give the console a moment to drain.
sleep 0.5
poweroff -f
sleep 60
`;
