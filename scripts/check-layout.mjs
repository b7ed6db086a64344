#!/usr/bin/env node
// The house rules ARCHITECTURE.md states, checked on every `npm test` before any test runs:
//   - no import cycle among the modules of src/ (static and dynamic imports alike);
//   - bench/, demo/ and harness/ import nothing from tests/; src/ imports nothing outside src/;
//   - no source file under native/ or src/ over 800 lines;
//   - no file cites the reference texts the project was started from (the repo stands alone);
//   - the product addon exports no test or benchmark binding (those live in ibnbd_test.node).
// Prints each breach and exits 1; prints one summary line and exits 0 when the tree keeps them.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const files = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard'], { cwd: root, encoding: 'utf8' })
  .split('\n').filter((f) => f && existsSync(join(root, f)));
const breaches = [];

// --- imports ---------------------------------------------------------------------------------
const IMPORT = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
const tsFiles = files.filter((f) => /\.(ts|mjs)$/.test(f));
const importsOf = new Map();
for (const f of tsFiles) {
  const text = readFileSync(join(root, f), 'utf8');
  const out = [];
  for (const m of text.matchAll(IMPORT)) {
    const target = normalize(join(dirname(f), m[1])).replace(/\.js$/, '.ts');
    out.push(target);
  }
  importsOf.set(f, out);
}
for (const [f, targets] of importsOf) {
  for (const t of targets) {
    if (/^(bench|demo|harness)\//.test(f) && t.startsWith('tests/')) breaches.push(`${f} imports ${t}: bench, demo and harness never import tests/`);
    if (f.startsWith('src/') && !t.startsWith('src/')) breaches.push(`${f} imports ${t}: the product imports nothing outside src/`);
  }
}
// cycles in src/: depth-first search with colours
const colour = new Map();
const stack = [];
function visit(f) {
  colour.set(f, 1);
  stack.push(f);
  for (const t of importsOf.get(f) ?? []) {
    if (!t.startsWith('src/') || !importsOf.has(t)) continue;
    if (colour.get(t) === 1) breaches.push(`import cycle in src/: ${[...stack.slice(stack.indexOf(t)), t].join(' -> ')}`);
    else if (!colour.get(t)) visit(t);
  }
  stack.pop();
  colour.set(f, 2);
}
for (const f of importsOf.keys()) if (f.startsWith('src/') && !colour.get(f)) visit(f);

// --- file sizes --------------------------------------------------------------------------------
for (const f of files) {
  if (!/^(native|src)\/.*\.(cc|h|c|ts)$/.test(f)) continue;
  const lines = readFileSync(join(root, f), 'utf8').split('\n').length - 1;
  if (lines > 800) breaches.push(`${f} has ${lines} lines (at most 800)`);
}

// --- the repo stands alone ------------------------------------------------------------------------
const REFERENCE = ['PROTOCOL', 'LAB', 'IBNBD'].map((n) => `${n}.${n === 'IBNBD' ? 'txt' : 'md'}`);
for (const f of files) {
  if (f === 'package-lock.json' || f === 'scripts/check-layout.mjs') continue;
  const text = readFileSync(join(root, f), 'latin1');
  for (const name of REFERENCE) if (text.includes(name)) breaches.push(`${f} cites ${name}, a file outside this repository`);
}

// --- the product addon -----------------------------------------------------------------------------
const PRODUCT_EXPORTS = ['NativeClientSession', 'NativeServer', 'NativeVhostBlk', 'buildInfo', 'configureIoThreads', 'ioThreadCount', 'ioThreadStats', 'linkProbe', 'probeDevice', 'sdNotify', 'setLogLevel', 'setLogSink', 'setPollUs'];
const addon = join(root, 'native', 'build', 'Release', 'ibnbd.node');
let exportsLine = '(addon not built)';
if (existsSync(addon)) {
  const names = Object.keys(createRequire(import.meta.url)(addon)).sort();
  exportsLine = names.join(' ');
  const extra = names.filter((n) => !PRODUCT_EXPORTS.includes(n));
  if (extra.length) breaches.push(`the product addon exports ${extra.join(', ')}: test and benchmark bindings belong in ibnbd_test.node`);
}

if (breaches.length) {
  for (const b of breaches) console.error(`layout: ${b}`);
  process.exit(1);
}
console.log(`layout: ok (${tsFiles.length} TS modules, ${files.length} files; product addon exports: ${exportsLine})`);
void relative;
