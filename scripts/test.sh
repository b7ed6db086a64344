#!/usr/bin/env bash
# `npm test`: set-up and build already ran (pretest). Runs the whole ava suite on the Release
# addon, then the sanitizer job: the native-heavy tests again on the ASan/UBSan build.
set -euo pipefail
cd "$(dirname "$0")/.."

npx ava "$@"

if [ $# -eq 0 ] && [ "${IBNBD_SKIP_SANITIZER:-0}" != 1 ]; then
  IBNBD_SANITIZE=1 node scripts/build-native.mjs >/dev/null
  asan="$(gcc -print-file-name=libasan.so)"
  ubsan="$(gcc -print-file-name=libubsan.so)"
  echo "sanitizer job: ASan + UBSan build of the addon"
  IBNBD_SANITIZE=1 LD_PRELOAD="$asan:$ubsan" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    npx ava $(cat tests/sanitizer-suite.txt | grep -v '^#' | sed 's|^|dist/tests/|; s|\.ts$|.js|')
fi
