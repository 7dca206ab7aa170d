// Fleet page (counts from GET /api/v1/fleet, versions over time from /api/v1/fleet/versions,
// one page of GET /api/v1/devices with the filters) and a device's page.
import * as api from './api.js';
import { h, fill, pill, age, time, bytes } from './dom.js';
import { countBars, versionsChart, legend, segmentBar, stateColor, versionColor } from './charts.js';

const PAGE_SIZE = 25;
const HISTORY_EVERY_MS = 10000;  // the chart replays the event log: not on every poll
const STATES = ['idle', 'updating', 'offered', 'accepted', 'downloading', 'verifying', 'installing',
  'rebooting', 'confirming'];

export function mountFleet(el, ctx) {
  const tiles = h('div', { class: 'tiles', id: 'fleet-tiles' });
  const byVersion = h('div', { id: 'by-version' });
  const byHw = h('div', { id: 'by-hw' });
  const byState = h('div', { id: 'by-state' });
  const chart = h('div', { id: 'versions' });
  const error = h('p', { class: 'error', role: 'alert' });

  const f = {
    search: h('input', { id: 'f-search', type: 'search', placeholder: 'device id starts with' }),
    group: h('select', { id: 'f-group' }, h('option', { value: '' }, 'any')),
    tag: h('input', { id: 'f-tag', placeholder: 'site=berlin and not beta' }),
    version: h('select', { id: 'f-version' }, h('option', { value: '' }, 'any')),
    state: h('select', { id: 'f-state' }, h('option', { value: '' }, 'any'),
      STATES.map((s) => h('option', { value: s }, s))),
    online: h('select', { id: 'f-online' }, h('option', { value: '' }, 'any'),
      h('option', { value: 'true' }, 'online'), h('option', { value: 'false' }, 'offline')),
  };
  const tagError = h('span', { class: 'field-error', id: 'f-tag-error' });
  const rows = h('tbody');
  const pageInfo = h('span', { id: 'devices-range' });
  const prev = h('button', { type: 'button', id: 'devices-prev' }, 'Previous');
  const next = h('button', { type: 'button', id: 'devices-next' }, 'Next');
  let offset = 0;
  let total = 0;
  let historyAt = 0;

  const changed = () => { offset = 0; refreshDevices().catch(() => {}); };
  let debounce = null;
  for (const input of [f.search, f.tag]) input.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(changed, 300);
  });
  for (const sel of [f.group, f.version, f.state, f.online]) sel.addEventListener('change', changed);
  prev.addEventListener('click', () => { offset = Math.max(0, offset - PAGE_SIZE); refreshDevices(); });
  next.addEventListener('click', () => { offset += PAGE_SIZE; refreshDevices(); });

  el.append(
    h('h1', {}, 'Fleet'), error, tiles,
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h2', {}, 'By version'), byVersion),
      h('div', { class: 'card' }, h('h2', {}, 'By hardware'), byHw),
      h('div', { class: 'card' }, h('h2', {}, 'By update state'), byState)),
    h('div', { class: 'card' }, h('h2', {}, 'Versions over time (from the event log)'), chart),
    h('div', { class: 'card' }, h('h2', {}, 'Devices'),
      h('div', { class: 'filters' },
        h('label', {}, 'Search', f.search), h('label', {}, 'Group', f.group),
        h('label', {}, 'Tag expression', f.tag, tagError), h('label', {}, 'Version', f.version),
        h('label', {}, 'State', f.state), h('label', {}, 'Online', f.online)),
      h('table', { id: 'devices' },
        h('thead', {}, h('tr', {}, ['Device', 'Online', 'Version', 'Hardware', 'State', 'Groups',
          'Tags', 'Last error'].map((c) => h('th', {}, c)))), rows),
      h('div', { class: 'pager' }, prev, pageInfo, next)));

  // Keeps a <select>'s options equal to `values` (plus "any"), keeping the choice.
  function syncOptions(sel, values) {
    const have = [...sel.options].slice(1).map((o) => o.value);
    if (have.join('\n') === values.join('\n')) return;
    const chosen = sel.value;
    fill(sel, h('option', { value: '' }, 'any'), values.map((v) => h('option', { value: v }, v)));
    sel.value = values.includes(chosen) ? chosen : '';
  }

  function tagExpression() {
    const search = f.search.value.trim();
    const tag = f.tag.value.trim();
    // The API has no free-text search: a device id prefix is the built-in tag `id` with `*`.
    const idPart = search ? `id=${search.replace(/[^A-Za-z0-9_.:-]/g, '')}*` : '';
    if (idPart && tag) return `${idPart} and (${tag})`;
    return idPart || tag;
  }

  async function refreshSummary() {
    const s = await api.get('/api/v1/fleet');
    fill(tiles,
      tile('total', s.total, 'devices'), tile('online', s.online, 'online'),
      tile('offline', s.offline, 'offline'),
      tile('updating', s.total - (s.by_state.idle || 0), 'updating'));
    fill(byVersion, countBars(s.by_version, 'version', versionColor));
    fill(byHw, countBars(s.by_hw, 'hw'));
    fill(byState, countBars(s.by_state, 'state', stateColor));
    syncOptions(f.group, Object.keys(s.by_group).sort());
    syncOptions(f.version, Object.keys(s.by_version).sort());
  }

  let devicesSeq = 0;  // a filter change and the poll may overlap: only the newest answer is shown
  async function refreshDevices() {
    const seq = ++devicesSeq;
    const params = { group: f.group.value, tag: tagExpression(), version: f.version.value,
      state: f.state.value, online: f.online.value, limit: PAGE_SIZE, offset };
    let list;
    try {
      list = await api.page('/api/v1/devices' + api.query(params));
      if (seq !== devicesSeq) return;
      tagError.textContent = '';
    } catch (e) {
      if (seq !== devicesSeq) return;
      if (e.field === 'tag') { tagError.textContent = e.message; return; }
      throw e;
    }
    total = list.total;
    if (offset >= total && total > 0) { offset = Math.floor((total - 1) / PAGE_SIZE) * PAGE_SIZE; return refreshDevices(); }
    fill(rows, list.items.map(deviceRow));
    pageInfo.textContent = total ? `${offset + 1}–${offset + list.items.length} of ${total}` : 'no devices match';
    pageInfo.dataset.total = total;
    prev.disabled = offset === 0;
    next.disabled = offset + PAGE_SIZE >= total;
  }

  async function refreshHistory() {
    if (Date.now() - historyAt < HISTORY_EVERY_MS) return;
    historyAt = Date.now();
    const history = await api.get('/api/v1/fleet/versions?points=48');
    fill(chart, versionsChart(history), legend(history.versions || []));
  }

  return {
    async refresh() {
      try {
        await Promise.all([refreshSummary(), refreshDevices(), refreshHistory()]);
        error.textContent = '';
      } catch (e) {
        error.textContent = e.message;
        throw e;
      }
    },
  };
}

function tile(key, n, label) {
  return h('div', { class: 'tile' }, h('div', { class: 'n', 'data-count': key }, String(n)),
    h('div', { class: 'l' }, label));
}

function deviceRow(d) {
  const tags = Object.entries(d.tags || {}).map(([k, v]) => `${k}=${v}`).join(', ');
  const state = d.transfer
    ? h('span', {}, pill(d.state), ` ${d.transfer.version} ${d.transfer.percent}%`)
    : pill(d.state);
  return h('tr', { 'data-device': d.id },
    h('td', {}, h('a', { href: '#/devices/' + encodeURIComponent(d.id) }, d.id)),
    h('td', {}, d.revoked ? pill('revoked') : pill(d.online ? 'online' : 'offline'),
      ' ', h('span', { class: 'muted' }, age(d.heartbeat_age))),
    h('td', {}, d.version), h('td', {}, d.hw), h('td', {}, state),
    h('td', {}, (d.member_of || []).join(', ')), h('td', {}, tags),
    h('td', { class: 'error' }, d.last_error || ''));
}

export function mountDevice(el, ctx, id) {
  const body = h('div');
  el.append(h('p', {}, h('a', { href: '#/fleet' }, '← Fleet')), h('h1', {}, 'Device ', h('span', { class: 'mono' }, id)), body);
  return {
    async refresh() {
      let d;
      let events;
      try {
        [d, events] = await Promise.all([
          api.get('/api/v1/devices/' + encodeURIComponent(id)),
          api.get('/api/v1/events?limit=20&device=' + encodeURIComponent(id)).catch(() => []),
        ]);
      } catch (e) {
        fill(body, h('p', { class: 'error', role: 'alert' }, e.message));
        throw e;
      }
      const t = d.transfer;
      fill(body,
        h('div', { class: 'grid' },
          h('div', { class: 'card', id: 'device-summary' }, h('h2', {}, 'Now'),
            h('table', {}, h('tbody', {},
              kv('Online', d.revoked ? pill('revoked') : pill(d.online ? 'online' : 'offline'),
                ` heard from ${age(d.heartbeat_age)} ago`),
              kv('Version', d.version, d.previous_version ? ` (before: ${d.previous_version})` : ''),
              kv('Hardware', d.hw), kv('Slot', `${d.slot}/${d.slot_state}`),
              kv('Groups', (d.member_of || []).join(', ')), kv('Free', bytes(d.free)),
              kv('Security counter', d.counter), kv('Key set', d.keys)))),
          h('div', { class: 'card', id: 'device-transfer' }, h('h2', {}, 'Transfer in progress'),
            t ? [h('p', {}, pill(t.state), ` ${t.version} — ${t.percent}% `,
              t.rollout ? h('a', { href: '#/rollouts/' + t.rollout }, t.rollout) : t.deployment),
            segmentBar([{ n: t.percent, color: '#1f6feb', label: 'received %' }], 100)]
              : h('p', { class: 'muted' }, 'none')),
          h('div', { class: 'card', id: 'device-error' }, h('h2', {}, 'Last error'),
            d.last_error ? h('p', { class: 'error' }, d.last_error) : h('p', { class: 'muted' }, 'none')),
          h('div', { class: 'card', id: 'device-tags' }, h('h2', {}, 'Tags'),
            Object.keys(d.tags || {}).length
              ? h('ul', {}, Object.entries(d.tags).map(([k, v]) => h('li', { class: 'mono' }, `${k}=${v}`)))
              : h('p', { class: 'muted' }, 'none'))),
        h('div', { class: 'card' }, h('h2', {}, 'Update history'),
          h('table', { id: 'device-history' },
            h('thead', {}, h('tr', {}, ['Deployment', 'State', 'Reason', 'Received', 'Updated'].map((c) => h('th', {}, c)))),
            h('tbody', {}, (d.deployments || []).map((r) => h('tr', {},
              h('td', { class: 'mono' }, r.deployment), h('td', {}, pill(r.state)),
              h('td', { class: r.reason ? 'error' : '' }, r.reason || ''),
              h('td', {}, `${bytes(r.received)} / ${bytes(r.total)}`), h('td', {}, time(r.updated_at))))))),
        h('div', { class: 'card' }, h('h2', {}, 'Events'), eventTable(events)));
    },
  };
}

function kv(k, ...v) { return h('tr', {}, h('th', {}, k), h('td', {}, ...v)); }

export function eventTable(events) {
  return h('table', { class: 'events' },
    h('thead', {}, h('tr', {}, ['Time', 'What', 'Device', 'Detail', 'Actor'].map((c) => h('th', {}, c)))),
    h('tbody', {}, [...events].reverse().map((e) => h('tr', { 'data-what': e.what },
      h('td', {}, time(e.ts)), h('td', {}, e.what), h('td', { class: 'mono' }, e.device),
      h('td', {}, e.detail), h('td', {}, e.actor)))));
}
