// The bench's stand-in for a Prometheus server (target m, bench/targets.ts): a process of its own,
// as Prometheus is, so that what it spends is not the runner's; it fetches every /metrics URL
// once a second while the flag file exists (the runner makes it for each of m's runs) and keeps
// its tally in the stats file.
//   node dist/bench/metrics-scraper.js FLAG STATS URL...
import { existsSync, writeFileSync } from 'node:fs';

const [flag, statsFile, ...urls] = process.argv.slice(2);
if (!flag || !statsFile || !urls.length) {
  process.stderr.write('usage: metrics-scraper FLAG STATS URL...\n');
  process.exit(2);
}
const stats = { scrapes: 0, failed: 0, ms: 0 };

async function scrape(url: string): Promise<void> {
  const t0 = performance.now();
  try {
    const r = await fetch(url);
    await r.text();
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    stats.scrapes++;
    stats.ms += performance.now() - t0;
  } catch {
    stats.failed++;
  }
}

setInterval(() => {
  if (!existsSync(flag)) return;
  void Promise.all(urls.map(scrape)).then(() => writeFileSync(statsFile!, JSON.stringify(stats)));
}, 1000);
process.on('SIGTERM', () => process.exit(0));
