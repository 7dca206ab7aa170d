// Images: the list (version, hardware, kind, size, SHA-256, where deployed) and the upload
// form (POST /api/v1/images, the file as application/octet-stream).
import * as api from './api.js';
import { h, fill, pill, bytes, time } from './dom.js';

export function mountImages(el, ctx) {
  const rows = h('tbody');
  const upload = ctx.canOperate ? uploadForm(() => list.refresh()) : null;
  el.append(h('h1', {}, 'Images'), upload,
    h('table', { id: 'images' }, h('thead', {}, h('tr', {},
      ['Version', 'Hardware', 'Kind', 'Size', 'SHA-256', 'Running on', 'Deployed by', 'Added'].map((c) => h('th', {}, c)))),
    rows));
  const list = {
    async refresh() {
      const [imgs, fleet, rollouts, deployments] = await Promise.all([
        api.get('/api/v1/images?limit=1000'), api.get('/api/v1/fleet'),
        api.get('/api/v1/rollouts?limit=10000'), api.get('/api/v1/deployments?limit=10000')]);
      const byImage = {};
      for (const r of rollouts) (byImage[r.image] = byImage[r.image] || []).push(r);
      // Plain deployments (a device or a group, without a rollout) by image.
      const deployedTo = {};
      for (const d of deployments)
        if (d.target_kind !== 'rollout') (deployedTo[d.image] = deployedTo[d.image] || []).push(d);
      fill(rows, [...imgs].reverse().map((i) => h('tr', { 'data-image': i.id },
        h('td', {}, i.version), h('td', {}, i.hw.join(', ')), h('td', {}, i.kind),
        h('td', {}, bytes(i.size)), h('td', { class: 'mono', title: i.sha256 }, i.sha256),
        h('td', {}, `${fleet.by_version[i.version] || 0} devices`),
        h('td', {}, (byImage[i.id] || []).slice(-5).map((r) =>
          h('div', {}, h('a', { href: '#/rollouts/' + r.id, class: 'mono' }, r.id), ' ', pill(r.state))),
        (deployedTo[i.id] || []).slice(-5).map((d) =>
          h('div', {}, `${d.target_kind} ${d.target} `, pill(d.state)))),
        h('td', {}, time(i.created_at)))));
    },
  };
  return list;
}

function uploadForm(done) {
  const err = (name) => h('span', { class: 'field-error', 'data-error-for': name });
  const file = h('input', { type: 'file', name: 'file', required: true });
  const version = h('input', { name: 'version', placeholder: '1.2.0', size: 10 });
  const hw = h('input', { name: 'hw', placeholder: 'esp32, esp32s3', size: 16 });
  const kind = h('select', { name: 'kind' }, h('option', { value: 'firmware' }, 'firmware'), h('option', { value: 'bundle' }, 'bundle'));
  const counter = h('input', { name: 'counter', placeholder: '0', size: 4 });
  const status = h('p', { role: 'status', id: 'upload-status' });
  const form = h('form', { class: 'card filters', id: 'upload-form' },
    h('label', {}, 'Image file', file, err('file')), h('label', {}, 'Version', version, err('version')),
    h('label', {}, 'Hardware', hw, err('hw')), h('label', {}, 'Kind', kind, err('kind')),
    h('label', {}, 'Security counter', counter, err('counter')),
    h('button', { type: 'submit', class: 'primary' }, 'Upload'), status);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    for (const e of form.querySelectorAll('[data-error-for]')) e.textContent = '';
    status.textContent = '';
    const f = file.files[0];
    if (!f) { form.querySelector('[data-error-for="file"]').textContent = 'choose a file'; return; }
    const q = new URLSearchParams({ version: version.value.trim() });
    for (const m of hw.value.split(/[\s,]+/).filter(Boolean)) q.append('hw', m);
    if (kind.value !== 'firmware') q.set('kind', kind.value);
    if (counter.value.trim()) q.set('counter', counter.value.trim());
    status.textContent = `uploading ${bytes(f.size)}…`;
    try {
      const { body } = await api.request('POST', '/api/v1/images?' + q, { body: f, contentType: 'application/octet-stream' });
      status.textContent = body.created ? `added ${body.version} (${body.id})` : `${body.version} was there already`;
      done();
    } catch (e) {
      const slot = e.field && form.querySelector(`[data-error-for="${e.field}"]`);
      if (slot) { slot.textContent = e.message; status.textContent = ''; } else status.textContent = 'upload refused: ' + e.message;
    }
  });
  return form;
}
