// Small DOM and formatting helpers shared by the pages.

// h('div', {class: 'x', onclick: fn}, child, 'text', [children]): an element. Attributes whose
// value is null/undefined/false are left out; on* functions become listeners.
export function h(tag, attrs, ...children) {
  const el = document.createElementNS(
    SVG_TAGS.has(tag) ? 'http://www.w3.org/2000/svg' : 'http://www.w3.org/1999/xhtml', tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' && 'value' in el) el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}
const SVG_TAGS = new Set(['svg', 'rect', 'path', 'line', 'text', 'g', 'title', 'polyline', 'circle']);

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// Replaces the children of `el`.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const pill = (state) => h('span', { class: 'pill ' + state, 'data-state': state }, state);

export function bytes(n) {
  if (n === null || n === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : String(v)) + ' ' + units[i];
}

// Unix seconds or milliseconds as "2026-12-02 01:02:03 UTC".
export function time(t) {
  if (!t) return '';
  const ms = t > 1e12 ? t : t * 1000;
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
}

export function age(seconds) {
  if (seconds === null || seconds === undefined) return 'never';
  if (seconds < 60) return seconds + 's';
  if (seconds < 3600) return Math.floor(seconds / 60) + 'm';
  if (seconds < 86400) return Math.floor(seconds / 3600) + 'h';
  return Math.floor(seconds / 86400) + 'd';
}

export const pct = (x) => (x === null || x === undefined ? '-' : (Math.round(x * 10) / 10) + '%');
