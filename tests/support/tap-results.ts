// What an `ava --tap` run reported: one entry per test line, and which file each came from (ava
// prefixes titles with the file name when it runs several files).
export interface TapTest {
  ok: boolean;
  /** the file part of the title ("server-io"), '' when ava ran one file */
  file: string;
  title: string;
  /** '# SKIP' / '# TODO' or '' */
  directive: string;
}

const TEST_LINE = /^(ok|not ok) \d+ - (.*?)(?: (# (?:SKIP|TODO)))?$/;
const SEPARATOR = ' › ';

export function parseTapLine(line: string): TapTest | null {
  const m = TEST_LINE.exec(line.trimEnd());
  if (!m) return null;
  const full = m[2]!;
  const cut = full.indexOf(SEPARATOR);
  return {
    ok: m[1] === 'ok',
    file: cut < 0 ? '' : full.slice(0, cut),
    title: cut < 0 ? full : full.slice(cut + SEPARATOR.length),
    directive: m[3] ?? '',
  };
}

export function parseTap(output: string): TapTest[] {
  return output.split('\n').flatMap((l) => parseTapLine(l) ?? []);
}

/** Tests that ran and passed: ok without a SKIP or TODO directive. */
export const passedTests = (tests: TapTest[]): TapTest[] => tests.filter((x) => x.ok && x.directive === '');
