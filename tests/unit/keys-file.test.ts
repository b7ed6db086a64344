// The keys file of --auth-keys (src/auth/keys-file.ts): secrets in hex or base64 of 32..1024
// bytes, one session per line, comments; a file others can read is refused with the reason;
// every mistake names the file and the line.
import test from 'ava';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadKeysFile, parseKeys } from '../../src/auth/keys-file.js';
import { tempDir } from '../../harness/fixtures.js';

const HEX32 = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
const B64_48 = Buffer.alloc(48, 7).toString('base64');

test('hex and base64 secrets, comments, blank lines; rdma-unauthenticated on the server only', (t) => {
  const k = parseKeys(`# our hosts\nvm-1 ${HEX32}\n\n  vm-2   ${B64_48}  # trailing comment\nkern rdma-unauthenticated\n`, 'f', true);
  t.deepEqual([...k.secrets.keys()], ['vm-1', 'vm-2']);
  t.is(k.secrets.get('vm-1')!.toString('hex'), HEX32);
  t.deepEqual(k.secrets.get('vm-2'), Buffer.alloc(48, 7));
  t.deepEqual([...k.openOverRdma], ['kern']);
  const e = t.throws(() => parseKeys('kern rdma-unauthenticated\n', 'client.keys', false));
  t.regex(e!.message, /client\.keys, line 1: rdma-unauthenticated is a server's entry/);
});

test('each mistake is EINVAL with the file and the line', (t) => {
  const cases: Array<[string, RegExp]> = [
    [`vm-1 ${HEX32.slice(0, 62)}`, /line 1: the secret of vm-1 is 31 bytes; 32\.\.1024 are needed/],
    [`vm-1`, /line 1: expected "<sessname> <secret>"/],
    [`vm-1 ${HEX32} extra`, /line 1: expected/],
    [`# c\nvm-1 not*base64*or*hex!`, /line 2: the secret of vm-1 is neither hex nor base64/],
    [`vm-1 ${HEX32}\nvm-1 ${HEX32}`, /line 2: session vm-1 is listed twice/],
    [`a/b ${HEX32}`, /line 1: sessname: contains '\/'/],
  ];
  for (const [text, re] of cases) {
    const e = t.throws(() => parseKeys(text, 'k.txt', true), undefined, text);
    t.is((e as { code?: string }).code, 'EINVAL', text);
    t.regex(e!.message, /^keys file k\.txt, /, text);
    t.regex(e!.message, re, text);
  }
});

test('a keys file readable by group or others is refused at load, with the mode and the fix', (t) => {
  const dir = tempDir(t, 'keys');
  const f = join(dir, 'k');
  writeFileSync(f, `vm-1 ${HEX32}\n`);
  chmodSync(f, 0o644);
  const e = t.throws(() => loadKeysFile(f, true));
  t.is((e as { code?: string }).code, 'EACCES');
  t.regex(e!.message, /readable or writable by group or others \(mode 0644\); make it the owner's alone: chmod 600/);
  chmodSync(f, 0o600);
  t.is(loadKeysFile(f, true).secrets.size, 1);
  t.is((t.throws(() => loadKeysFile(join(dir, 'none'), true)) as { code?: string }).code, 'ENOENT');
});
