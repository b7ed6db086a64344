// The client daemon's state file (docs/client.md, "Mappings across restarts"), read as untrusted
// input: what it saves loads back; a file that cannot be read at all is moved aside as it was and
// reported; one bad entry costs only itself; the save leaves no temporary file behind.
import test from 'ava';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { StateFile, STATE_FILE } from '../../src/client/state-file.js';

function dir(t: import('ava').ExecutionContext): string {
  const d = mkdtempSync(join(tmpdir(), 'ibnbd-state-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

const MAP = 'sessname=s path=ip:10.0.0.1 device_path=a.img transport=tcp ctrl_loss_tmo=600 fast_io_fail_tmo=-1';

test('saved mappings load back, in order; no file yet is no mappings; no temporary file is left', async (t) => {
  const d = dir(t);
  const f = new StateFile(join(d, 'state'));
  t.deepEqual(await f.load(), { mappings: [], rejected: [] });
  await Promise.all([f.save([{ name: 'x', map: MAP }]), f.save([{ name: 'ibnbd0', map: MAP }, { name: 'vm1', map: `${MAP} name=vm1` }])]);
  const loaded = await f.load();
  t.deepEqual(loaded.mappings.map((m) => [m.name, m.request.devicePath, m.request.name]), [['ibnbd0', 'a.img', 'ibnbd0'], ['vm1', 'a.img', 'vm1']], 'the last save wins');
  t.deepEqual(readdirSync(join(d, 'state')), [STATE_FILE]);
});

test('unusable files are moved aside unchanged, with the reason', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['{"format":"ibnbd-client-state","version":1,"mappings":[{"name":"a"', /^not JSON/],
    ['[]', /not an ibnbd-client-state file/],
    ['{"format":"ibnbd-client-state","version":2,"mappings":[]}', /version 2 is from a newer daemon/],
    ['{"format":"ibnbd-client-state","version":"1","mappings":[]}', /version "1" is from an unknown format/],
    ['{"format":"ibnbd-client-state","version":1,"mappings":{}}', /"mappings" is not a list/],
  ];
  for (const [text, why] of cases) {
    const d = dir(t);
    writeFileSync(join(d, STATE_FILE), text);
    const r = await new StateFile(d).load();
    t.deepEqual(r.mappings, []);
    t.regex(r.quarantined?.reason ?? '', why, text);
    t.is(readFileSync(r.quarantined!.path, 'utf8'), text);
    t.false(readdirSync(d).includes(STATE_FILE));
  }
});

test('a bad entry costs only itself, and is returned as it was', async (t) => {
  const d = dir(t);
  const entries = [
    { name: 'ok', map: MAP },
    { name: 'ok', map: MAP },
    { name: '../etc', map: MAP },
    { name: 'nomap' },
    { name: 'badmap', map: 'sessname=s path=nowhere device_path=a' },
    { name: 'other', map: `${MAP} name=else` },
    7,
  ];
  writeFileSync(join(d, STATE_FILE), JSON.stringify({ format: 'ibnbd-client-state', version: 1, mappings: entries }));
  const r = await new StateFile(d).load();
  t.deepEqual(r.mappings.map((m) => m.name), ['ok']);
  t.deepEqual(r.rejected.map((x) => [x.entry, x.reason.split(':')[0]]), [
    ['ok', 'name given twice'],
    ['../etc', 'bad or missing name'],
    ['nomap', 'missing map string'],
    ['badmap', 'path'],
    ['other', "map string names 'else'"],
    ['#6', 'bad or missing name'],
  ]);
  t.deepEqual(r.rejected.map((x) => x.raw), entries.slice(1));
});
