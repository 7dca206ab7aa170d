// Rollouts: the list, a rollout's page (waves, failure rate against the policy, devices by
// state, recent events, the operator's actions) and the form that creates one.
import * as api from './api.js';
import { h, fill, pill, time, pct } from './dom.js';
import { countBars, segmentBar, stateColor } from './charts.js';
import { eventTable } from './fleet.js';

const LIST_SIZE = 100;
const FINAL_BAD = ['failed', 'timed_out'];

export function mountList(el, ctx) {
  const rows = h('tbody');
  const info = h('p', { class: 'muted' });
  el.append(h('h1', {}, 'Rollouts'),
    ctx.canOperate ? h('p', {}, h('a', { href: '#/rollouts/new', id: 'new-rollout' }, h('button', { type: 'button', class: 'primary' }, 'New rollout'))) : null,
    h('table', { id: 'rollouts' }, h('thead', {}, h('tr', {},
      ['Rollout', 'Name', 'Version', 'Target', 'State', 'Wave', 'Progress', 'Failures', 'Created']
        .map((c) => h('th', {}, c)))), rows), info);
  return {
    async refresh() {
      // Oldest first in the API: the newest LIST_SIZE are the last page.
      const head = await api.page('/api/v1/rollouts?limit=1');
      const offset = Math.max(0, head.total - LIST_SIZE);
      const list = await api.page(`/api/v1/rollouts?limit=${LIST_SIZE}&offset=${offset}`);
      fill(rows, [...list.items].reverse().map((r) => h('tr', { 'data-rollout': r.id },
        h('td', {}, h('a', { href: '#/rollouts/' + r.id, class: 'mono' }, r.id)),
        h('td', {}, r.name), h('td', {}, r.version), h('td', {}, targetText(r.target)),
        h('td', {}, pill(r.state)),
        h('td', {}, r.started_at ? `${Math.min(r.current_wave + 1, r.waves_total)}/${r.waves_total}` : '-'),
        h('td', { style: 'min-width:10em' }, progressBar(r.counts, r.devices_total), ` ${r.percent}%`),
        h('td', {}, pct(r.failure_rate && r.failure_rate.total)), h('td', {}, time(r.created_at)))));
      info.textContent = head.total > LIST_SIZE ? `the newest ${LIST_SIZE} of ${head.total}` : `${head.total} rollouts`;
    },
  };
}

function targetText(t) {
  if (!t) return '';
  if (t.kind === 'devices') {
    try { return 'devices ' + JSON.parse(t.value).join(', '); } catch { return 'devices ' + t.value; }
  }
  return `${t.kind} ${t.value}`;
}

function inFlight(c) { return (c.offered || 0) + (c.downloading || 0) + (c.installing || 0); }

function progressBar(c, total) {
  c = c || {};
  return segmentBar([
    { n: c.succeeded, color: '#2e8540', label: 'succeeded' },
    { n: (c.failed || 0) + (c.timed_out || 0), color: '#c62828', label: 'failed or timed out' },
    { n: (c.declined || 0) + (c.cancelled || 0), color: '#8a96a3', label: 'declined or cancelled' },
    { n: inFlight(c), color: '#1f6feb', label: 'in flight' },
  ], total);
}

// What abort cancels: every device that has not reached installation (API.md, Rollouts).
function abortCancels(c) {
  return (c.pending || 0) + (c.deferred || 0) + (c.offered || 0) + (c.downloading || 0);
}

export function mountDetail(el, ctx, id) {
  const head = h('div', { class: 'card', id: 'rollout-head' });
  const actions = h('div', { class: 'actions', id: 'rollout-actions' });
  const confirmBox = h('div', { id: 'confirm', class: 'card', hidden: true });
  const actionError = h('p', { class: 'error', id: 'action-error', role: 'alert' });
  const waves = h('div', { class: 'card', id: 'waves' });
  const byState = h('div', { class: 'card', id: 'rollout-by-state' });
  const events = h('div', { class: 'card', id: 'rollout-events' });
  el.append(h('p', {}, h('a', { href: '#/rollouts' }, '← Rollouts')),
    h('h1', {}, 'Rollout ', h('span', { class: 'mono' }, id)), head, actions, confirmBox, actionError,
    h('div', { class: 'grid' }, waves, byState), events);
  let actionsKey = '';
  let last = null;

  async function act(action, body) {
    actionError.textContent = '';
    confirmBox.hidden = true;
    try {
      const r = await api.post(`/api/v1/rollouts/${encodeURIComponent(id)}/${action}`, body || {});
      if (action === 'rollback') location.hash = '#/rollouts/' + r.id;
      else render(r, null);
    } catch (e) {
      actionError.textContent = `${action} refused: ${e.message}`;
    }
  }

  function confirmAbort(r) {
    const n = abortCancels(r.counts);
    fill(confirmBox,
      h('p', { id: 'confirm-text' }, `Abort rollout ${r.id}? This cancels ${n} device${n === 1 ? '' : 's'} ` +
        'that have not reached installation (they keep their running image); devices installing finish.'),
      h('button', { type: 'button', class: 'danger', id: 'confirm-abort',
        onclick: () => act('abort', { reason: 'aborted from the web dashboard' }) }, `Abort and cancel ${n}`),
      ' ', h('button', { type: 'button', id: 'confirm-cancel', onclick: () => { confirmBox.hidden = true; } }, 'Keep it'));
    confirmBox.hidden = false;
  }

  function renderActions(r) {
    if (!ctx.canOperate) { fill(actions); return; }
    const c = r.counts || {};
    const started = r.state !== 'draft';
    const canRetry = started && r.state !== 'aborted' && FINAL_BAD.some((s) => c[s] > 0);
    const canRollback = started && r.deployment && (c.succeeded || 0) + (c.installing || 0) > 0;
    const key = [r.state, canRetry, canRollback].join('|');
    if (key === actionsKey) return;  // unchanged: keep the buttons under the pointer
    actionsKey = key;
    const button = (name, label, onclick, cls) =>
      h('button', { type: 'button', 'data-action': name, class: cls, onclick }, label);
    fill(actions,
      r.state === 'draft' ? button('start', 'Start', () => act('start'), 'primary') : null,
      ['running', 'scheduled'].includes(r.state) ? button('pause', 'Pause', () => act('pause', { reason: 'paused from the web dashboard' })) : null,
      r.state === 'paused' ? button('resume', 'Resume', () => act('resume'), 'primary') : null,
      !['completed', 'aborted'].includes(r.state) ? button('abort', 'Abort…', () => confirmAbort(last), 'danger') : null,
      canRetry ? button('retry', 'Retry failed devices', () => act('retry')) : null,
      canRollback ? button('rollback', 'Roll back…', () => {
        if (window.confirm(`Roll back the devices of ${r.id} to the version they ran before? A new rollout starts.`))
          act('rollback', { start: true });
      }) : null);
  }

  function render(r, evs) {
    last = r;
    const fr = r.failure_rate || {};
    const failAction = (r.policy && r.policy.failure && r.policy.failure.action) || fr.action;
    fill(head,
      h('p', {}, h('strong', {}, r.name || '(no name)'), ` — version ${r.version} to ${targetText(r.target)} `,
        pill(r.state), r.paused_by ? ` by ${r.paused_by}` : ''),
      r.pause_reason ? h('p', { class: r.state === 'aborted' || r.paused_by !== 'operator' ? 'error' : 'muted', id: 'pause-reason' }, r.pause_reason) : null,
      h('p', { id: 'overall', 'data-percent': r.percent, 'data-state': r.state }, `${r.percent}% of ${r.devices_total} devices final`,
        r.excluded ? ` (${r.excluded} excluded at start)` : '', '; wave ',
        `${Math.min(r.current_wave + 1, r.waves_total)}/${r.waves_total}`),
      progressBar(r.counts, r.devices_total),
      h('p', { id: 'failure-rate', 'data-rate': fr.total ?? '' },
        `Failure rate ${pct(fr.total)} — the policy allows ${pct(fr.max_total_rate)} overall and `,
        `${pct(fr.max_wave_rate)} per wave, then ${failAction || 'pause'}s`),
      h('p', { class: 'muted' }, `created ${time(r.created_at)}`, r.started_at ? `, started ${time(r.started_at)}` : '',
        r.finished_at ? `, finished ${time(r.finished_at)}` : ''));
    renderActions(r);
    fill(waves, h('h2', {}, 'Waves'), (r.waves || []).map((w) => {
      const c = w.counts || {};
      return h('div', { class: 'wave', 'data-wave': w.index, 'data-percent': w.percent, 'data-state': w.state },
        h('span', {}, `Wave ${w.index + 1} `, pill(w.state)),
        progressBar(c, w.devices),
        h('span', {}, `${w.percent}% of ${w.devices} · ok ${c.succeeded || 0} · fail ${(c.failed || 0) + (c.timed_out || 0)} · run ${inFlight(c)}`,
          ` · failure ${pct(w.failure_rate)}`, w.success_threshold !== null && w.success_threshold !== undefined
            ? ` (success ${pct(w.success_rate)}, needs ${w.success_threshold}%)` : ''));
    }));
    fill(byState, h('h2', {}, 'Devices by state'), countBars(
      Object.fromEntries(Object.entries(r.counts || {}).filter(([, n]) => n > 0)), 'state', stateColor));
    if (evs) fill(events, h('h2', {}, 'Recent events'), eventTable(evs));
  }

  return {
    async refresh() {
      const [r, evs] = await Promise.all([
        api.get('/api/v1/rollouts/' + encodeURIComponent(id)),
        api.get('/api/v1/events?limit=15&rollout=' + encodeURIComponent(id)).catch(() => []),
      ]);
      render(r, evs);
    },
  };
}

// ----------------------------------------------------------------------------- create form

// The API's error `field` -> the form control it is shown next to.
function controlFor(form, field) {
  const wave = field.match(/^waves\[(\d+)\](?:\.(\w+))?$/);
  if (wave) return form.querySelector(`[data-wave-row="${wave[1]}"] [name="${wave[2] || 'size'}"]`);
  if (field.startsWith('target')) return form.querySelector('[name="target_value"]');
  return form.querySelector(`[name="${field}"]`);
}

export function mountCreate(el, ctx) {
  if (!ctx.canOperate) {
    el.append(h('h1', {}, 'New rollout'), h('p', { class: 'error' }, `Token ${ctx.name} has role ${ctx.role}: creating a rollout needs operator.`));
    return { async refresh() {} };
  }
  const err = (name) => h('span', { class: 'field-error', 'data-error-for': name });
  const input = (name, attrs) => h('input', { name, ...attrs });
  const imageSel = h('select', { name: 'image', required: true });
  const kind = h('select', { name: 'target_kind' }, ['group', 'tags', 'devices'].map((k) => h('option', { value: k }, k)));
  const targetValue = input('target_value', { placeholder: 'lab', size: 40 });
  const matchCount = h('span', { id: 'match-count', class: 'muted' });
  const waveRows = h('div', { id: 'wave-rows' });
  const formError = h('p', { class: 'error', id: 'form-error', role: 'alert' });
  const addWave = (size) => {
    const i = waveRows.children.length;
    waveRows.append(h('div', { class: 'wave-row', 'data-wave-row': i },
      h('label', {}, `Wave ${i + 1} size`, input('size', { value: size, size: 6 }), err(`waves[${i}].size`)),
      h('label', {}, 'success threshold %', input('success_threshold', { size: 4 }), err(`waves[${i}].success_threshold`)),
      h('label', {}, 'soak', input('soak', { size: 5, placeholder: '5m' }), err(`waves[${i}].soak`))));
  };
  const form = h('form', { class: 'rollout card', id: 'rollout-form', novalidate: true },
    h('label', {}, 'Image', imageSel, err('image')),
    h('label', {}, 'Name', input('name', { size: 30 }), err('name')),
    h('fieldset', {}, h('legend', {}, 'Target'),
      h('label', {}, 'by', kind), h('label', {}, 'group, tag expression or device ids', targetValue, err('target')), matchCount),
    h('fieldset', {}, h('legend', {}, 'Waves (sizes: "10%" of the rest or a count; the last takes the rest)'),
      waveRows, err('waves'),
      h('button', { type: 'button', id: 'add-wave', onclick: () => addWave('100%') }, 'Add wave')),
    h('fieldset', {}, h('legend', {}, 'Policy'),
      h('label', {}, 'max failure % per wave', input('failure.max_wave_rate', { value: '10', size: 4 }), err('failure.max_wave_rate')),
      h('label', {}, 'max failure % overall', input('failure.max_total_rate', { value: '5', size: 4 }), err('failure.max_total_rate')),
      h('label', {}, 'then', h('select', { name: 'failure.action' }, h('option', { value: 'pause' }, 'pause'), h('option', { value: 'abort' }, 'abort')), err('failure.action')),
      h('label', {}, 'retries', input('retries', { value: '0', size: 3 }), err('retries')),
      h('label', {}, 'device timeout', input('timeout', { value: '1h', size: 5 }), err('timeout')),
      h('label', {}, 'max concurrent (0: no cap)', input('max_concurrent', { value: '0', size: 5 }), err('max_concurrent')),
      h('label', {}, 'window (UTC)', input('window', { placeholder: '22:00-04:00', size: 11 }), err('window'))),
    h('label', {}, h('span', {}, h('input', { type: 'checkbox', name: 'start', checked: true }), ' start now')),
    h('p', {}, h('button', { type: 'submit', class: 'primary', id: 'create-rollout' }, 'Create rollout')),
    formError);
  addWave('10%');
  addWave('100%');
  el.append(h('p', {}, h('a', { href: '#/rollouts' }, '← Rollouts')), h('h1', {}, 'New rollout'), form);

  // The live count of matched devices, from the same filters the rollout resolves.
  let countTimer = null;
  let countSeq = 0;
  async function updateCount() {
    const seq = ++countSeq;
    const v = targetValue.value.trim();
    const errEl = form.querySelector('[data-error-for="target"]');
    if (!v) { matchCount.textContent = ''; errEl.textContent = ''; return; }
    try {
      let n;
      if (kind.value === 'devices') {
        const ids = v.split(/[\s,]+/).filter(Boolean);
        const known = await Promise.all(ids.map((d) => api.get('/api/v1/devices/' + encodeURIComponent(d)).then(() => 1, () => 0)));
        n = known.reduce((a, b) => a + b, 0);
      } else {
        const s = await api.get('/api/v1/fleet' + api.query(kind.value === 'group' ? { group: v } : { tag: v }));
        n = s.total;
      }
      if (seq !== countSeq) return;
      matchCount.textContent = `${n} device${n === 1 ? '' : 's'} match`;
      matchCount.dataset.count = n;
      errEl.textContent = '';
    } catch (e) {
      if (seq !== countSeq) return;
      matchCount.textContent = '';
      delete matchCount.dataset.count;
      errEl.textContent = e.message;
    }
  }
  const scheduleCount = () => { clearTimeout(countTimer); countTimer = setTimeout(updateCount, 250); };
  targetValue.addEventListener('input', scheduleCount);
  kind.addEventListener('change', scheduleCount);

  // A number when the text is one, else the text itself, for the server to judge (and name).
  const numberOr = (s) => (s.trim() !== '' && !Number.isNaN(Number(s)) ? Number(s) : s.trim());
  function body() {
    const val = (n) => form.querySelector(`[name="${n}"]`).value.trim();
    const v = targetValue.value.trim();
    const target = kind.value === 'devices' ? { devices: v.split(/[\s,]+/).filter(Boolean) } : { [kind.value]: v };
    const waves = [...waveRows.children].map((row) => {
      const w = { size: numberOr(row.querySelector('[name="size"]').value) };
      const t = row.querySelector('[name="success_threshold"]').value.trim();
      const s = row.querySelector('[name="soak"]').value.trim();
      if (t) w.success_threshold = numberOr(t);
      if (s) w.soak = numberOr(s);
      return w;
    });
    const b = { image: imageSel.value, target, waves,
      failure: { max_wave_rate: numberOr(val('failure.max_wave_rate')), max_total_rate: numberOr(val('failure.max_total_rate')),
        action: val('failure.action') },
      retries: numberOr(val('retries')), timeout: numberOr(val('timeout')),
      max_concurrent: numberOr(val('max_concurrent')),
      start: form.querySelector('[name="start"]').checked };
    if (val('name')) b.name = val('name');
    if (val('window')) b.window = val('window');
    return b;
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const e of form.querySelectorAll('[data-error-for]')) e.textContent = '';
    for (const e of form.querySelectorAll('[aria-invalid]')) e.removeAttribute('aria-invalid');
    formError.textContent = '';
    try {
      const r = await api.post('/api/v1/rollouts', body());
      location.hash = '#/rollouts/' + r.id;
    } catch (e) {
      const control = e.field ? controlFor(form, e.field) : null;
      if (control) {
        control.setAttribute('aria-invalid', 'true');
        const label = control.closest('label');
        const slot = (label && label.querySelector('[data-error-for]')) || form.querySelector(`[data-error-for="${e.field}"]`);
        if (slot) slot.textContent = e.message;
        control.focus();
        formError.textContent = 'The controller refused the rollout: see the marked field.';
      } else {
        formError.textContent = 'The controller refused the rollout: ' + e.message;
      }
    }
  });

  return {
    async refresh() {
      if (imageSel.options.length) return;  // the form is not redrawn while someone types
      const imgs = await api.get('/api/v1/images?limit=1000');
      fill(imageSel, [...imgs].reverse().map((i) => h('option', { value: i.version }, `${i.version} (${i.hw.join(', ')}, ${i.kind})`)));
    },
  };
}
