// Hand-written SVG charts: horizontal count bars, a segmented progress bar and the
// versions-over-time lines. Each returns an <svg> element.
import { h } from './dom.js';

const PALETTE = ['#1f6feb', '#2e8540', '#b26a00', '#8e44ad', '#c62828', '#00838f', '#6d4c41',
  '#5f6b76', '#ad1457', '#558b2f'];
export const colorOf = (i) => PALETTE[i % PALETTE.length];
// One colour per version everywhere (bars and the chart's lines), whatever else is shown.
export function versionColor(version) {
  let hash = 0;
  for (const c of version) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

// Colours of states that mean the same everywhere: done, failed, in flight, waiting.
const STATE_COLORS = { succeeded: '#2e8540', idle: '#2e8540', failed: '#c62828', timed_out: '#8e1c1c',
  declined: '#8a96a3', cancelled: '#8a96a3', pending: '#b8c2cc', deferred: '#b26a00' };
export const stateColor = (state) => STATE_COLORS[state] || '#1f6feb';

// {label: count} as one bar per label, longest first. `key` names the data attribute that
// carries each label (data-version="1.0.0"), so tests and people can find a bar; `color`
// (label, index) picks a bar's colour (default: the palette in order).
export function countBars(counts, key, color = (label, i) => colorOf(i)) {
  const rows = Object.entries(counts || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const max = Math.max(1, ...rows.map((r) => r[1]));
  const rowH = 22;
  const width = 320;
  const labelW = 110;
  const svg = h('svg', { viewBox: `0 0 ${width} ${Math.max(1, rows.length) * rowH}`, width: '100%',
    height: Math.max(1, rows.length) * rowH, role: 'img' });
  rows.forEach(([label, n], i) => {
    const w = Math.max(2, ((width - labelW - 50) * n) / max);
    svg.append(h('g', { [`data-${key}`]: label, 'data-count': n },
      h('title', {}, `${label || '(none)'}: ${n}`),
      h('text', { x: 0, y: i * rowH + 15, 'font-size': 12 }, label || '(none)'),
      h('rect', { x: labelW, y: i * rowH + 4, width: w, height: 14, fill: color(label, i), rx: 2 }),
      h('text', { x: labelW + w + 6, y: i * rowH + 15, 'font-size': 12 }, String(n))));
  });
  if (!rows.length) svg.append(h('text', { x: 0, y: 15, 'font-size': 12, fill: '#5f6b76' }, 'none'));
  return svg;
}

// A progress bar of `total` split into segments [{n, color, label}] left to right.
export function segmentBar(segments, total) {
  const svg = h('svg', { class: 'bar', viewBox: '0 0 1000 14', preserveAspectRatio: 'none', role: 'img' });
  svg.append(h('rect', { x: 0, y: 0, width: 1000, height: 14, fill: '#e6ebf0', rx: 3 }));
  let x = 0;
  for (const s of segments) {
    if (!s.n || !total) continue;
    const w = (1000 * s.n) / total;
    svg.append(h('rect', { x, y: 0, width: w, height: 14, fill: s.color },
      h('title', {}, `${s.label}: ${s.n}`)));
    x += w;
  }
  return svg;
}

// Devices per version over time (GET /api/v1/fleet/versions): one line per version.
export function versionsChart(history) {
  const W = 640;
  const H = 200;
  const pad = { l: 40, r: 10, t: 10, b: 24 };
  const points = history.points || [];
  const versions = history.versions || [];
  const svg = h('svg', { viewBox: `0 0 ${W} ${H}`, width: '100%', role: 'img', id: 'versions-chart' });
  if (points.length < 2 || !versions.length) {
    svg.append(h('text', { x: pad.l, y: H / 2, fill: '#5f6b76' }, 'no version history in the event log yet'));
    return svg;
  }
  const max = Math.max(1, ...points.map((p) => Math.max(0, ...Object.values(p.counts))));
  const t0 = points[0].ts;
  const t1 = points[points.length - 1].ts;
  const x = (t) => pad.l + ((W - pad.l - pad.r) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (n) => H - pad.b - ((H - pad.t - pad.b) * n) / max;
  svg.append(h('line', { x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b, stroke: '#8a96a3' }));
  svg.append(h('line', { x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b, stroke: '#8a96a3' }));
  svg.append(h('text', { x: pad.l - 6, y: pad.t + 10, 'text-anchor': 'end', 'font-size': 11 }, String(max)));
  svg.append(h('text', { x: pad.l - 6, y: H - pad.b, 'text-anchor': 'end', 'font-size': 11 }, '0'));
  // HH:MM, with seconds when the whole range is under an hour.
  const clock = (t) => new Date(t).toISOString().slice(11, t1 - t0 < 3600e3 ? 19 : 16);
  svg.append(h('text', { x: pad.l, y: H - 6, 'font-size': 11 }, clock(t0) + ' UTC'));
  svg.append(h('text', { x: W - pad.r, y: H - 6, 'font-size': 11, 'text-anchor': 'end' }, clock(t1) + ' UTC'));
  versions.forEach((v) => {
    const d = points.map((p) => `${x(p.ts).toFixed(1)},${y(p.counts[v] || 0).toFixed(1)}`).join(' ');
    svg.append(h('polyline', { points: d, fill: 'none', stroke: versionColor(v), 'stroke-width': 2,
      'data-version': v }, h('title', {}, v)));
  });
  return svg;
}

export function legend(versions) {
  return h('div', { class: 'legend' },
    versions.map((v) => h('span', {}, h('i', { style: `background:${versionColor(v)}` }), v)));
}
