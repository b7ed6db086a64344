// A hand-written SVG chart (no dependency): per workload, one bar per target for the headline
// figure (IOPS or MB/s) and one for mean latency, each scaled to the largest bar of its group so
// that very different workloads share one picture; the absolute value is printed on each bar.
import type { TargetId } from './options.js';
import type { Report, TargetInfo } from './report.js';
import type { Workload } from './workloads.js';

const COLORS: Record<TargetId, string> = { a: '#d62728', b: '#1f77b4', c: '#ff7f0e', d: '#2ca02c', e: '#7f7f7f', m: '#9467bd', p: '#8c564b' };

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function fmt(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(n >= 1e4 ? 0 : 1)}k`;
  return n.toFixed(n >= 10 ? 0 : 1);
}

export function chartSvg(report: Report, workloads: readonly Workload[], infos: TargetInfo[], title: string): string {
  const bar = 22, gap = 4, groupGap = 30, panelH = 190, top = 60, left = 50;
  const groupW = infos.length * (bar + gap) + groupGap;
  const width = left + workloads.length * groupW + 20;
  const height = top + 2 * (panelH + 60) + 30 + infos.length * 18;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`);
  out.push(`<rect width="100%" height="100%" fill="white"/>`);
  out.push(`<text x="${left}" y="24" font-size="15" font-weight="bold">${esc(title)}</text>`);
  const panels: { name: string; value: (w: Workload, t: TargetId) => number | undefined }[] = [
    { name: 'throughput (IOPS for 4 KiB, MB/s for 128 KiB; higher is better)', value: (w, t) => report.cells[w.id]?.[t]?.[w.headline] },
    { name: 'mean latency µs (lower is better)', value: (w, t) => report.cells[w.id]?.[t]?.lat_us.mean },
  ];
  panels.forEach((panel, p) => {
    const y0 = top + p * (panelH + 60);
    const base = y0 + panelH;
    out.push(`<text x="${left}" y="${y0 - 8}" font-weight="bold">${esc(panel.name)}</text>`);
    out.push(`<line x1="${left - 5}" y1="${base}" x2="${width - 10}" y2="${base}" stroke="#333"/>`);
    workloads.forEach((w, g) => {
      const gx = left + g * groupW;
      const values = infos.map((i) => panel.value(w, i.id));
      const max = Math.max(...values.map((v) => v ?? 0), 1e-9);
      infos.forEach((info, k) => {
        const v = values[k];
        const x = gx + k * (bar + gap);
        if (v === undefined) {
          out.push(`<text x="${x + bar / 2}" y="${base - 4}" text-anchor="middle" fill="#999">–</text>`);
          return;
        }
        const h = Math.max(1, ((panelH - 20) * v) / max);
        out.push(`<rect x="${x}" y="${base - h}" width="${bar}" height="${h}" fill="${COLORS[info.id]}"><title>${esc(`${info.name}: ${v.toFixed(1)}`)}</title></rect>`);
        out.push(`<text x="${x + bar / 2}" y="${base - h - 3}" text-anchor="middle" font-size="9">${fmt(v)}</text>`);
      });
      out.push(`<text x="${gx + (infos.length * (bar + gap)) / 2}" y="${base + 15}" text-anchor="middle">${esc(w.label)}</text>`);
    });
  });
  const ly = top + 2 * (panelH + 60) + 5;
  infos.forEach((info, k) => {
    const y = ly + k * 18;
    out.push(`<rect x="${left}" y="${y}" width="12" height="12" fill="${COLORS[info.id]}"/>`);
    out.push(`<text x="${left + 18}" y="${y + 10}">${esc(`${info.id}: ${info.name}${info.unavailable ? ` — ${info.unavailable}` : ''}`)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
