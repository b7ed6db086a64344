// A guest in hostroot mode runs the host's node on the host's addon build. Under the sanitizer job
// (scripts/test.mjs: IBNBD_SANITIZE=1 and the ASan/UBSan runtimes in LD_PRELOAD) a guest command
// must load that same build the same way, or the job would test the Release addon in the guest.

/** `env …` to put before a guest command under the sanitizer job; '' otherwise. */
export function guestSanitizerEnv(): string {
  if (process.env.IBNBD_SANITIZE !== '1') return '';
  return `env IBNBD_SANITIZE=1 LD_PRELOAD=${process.env.LD_PRELOAD ?? ''} ASAN_OPTIONS=${process.env.ASAN_OPTIONS ?? 'detect_leaks=0'} `;
}
