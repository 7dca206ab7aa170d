// The dashboard's shell: sign-in, who is signed in (GET /api/v1/whoami: the role decides
// which action buttons exist), the hash router and the poll loop that refreshes the open
// page every POLL_MS while it is shown, and the banner while the controller is unreachable.
import * as api from './api.js';
import { fill } from './dom.js';
import * as fleet from './fleet.js';
import * as rollouts from './rollouts.js';
import * as images from './images.js';

const POLL_MS = 1500;
const $ = (id) => document.getElementById(id);

const ROUTES = [
  [/^#\/fleet$/, 'fleet', (el, ctx) => fleet.mountFleet(el, ctx)],
  [/^#\/devices\/(.+)$/, 'fleet', (el, ctx, m) => fleet.mountDevice(el, ctx, decodeURIComponent(m[1]))],
  [/^#\/rollouts$/, 'rollouts', (el, ctx) => rollouts.mountList(el, ctx)],
  [/^#\/rollouts\/new$/, 'rollouts', (el, ctx) => rollouts.mountCreate(el, ctx)],
  [/^#\/rollouts\/(.+)$/, 'rollouts', (el, ctx, m) => rollouts.mountDetail(el, ctx, decodeURIComponent(m[1]))],
  [/^#\/images$/, 'images', (el, ctx) => images.mountImages(el, ctx)],
];

let ctx = null;        // {name, role, canOperate}
let current = null;    // the mounted page: {refresh()}
let generation = 0;    // bumps on every navigation: a late refresh of a page left behind is dropped
let timer = null;

function showSignIn(message) {
  api.token.clear();
  ctx = null;
  current = null;  // no page polls without a token
  generation++;
  clearTimeout(timer);
  $('nav').hidden = true;
  $('sign-out').hidden = true;
  $('who').textContent = '';
  fill($('page'));
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message || '';
  $('token').focus();
}

async function signIn() {
  try {
    const me = await api.get('/api/v1/whoami');
    ctx = { name: me.name, role: me.role, canOperate: me.role === 'operator' || me.role === 'admin' };
  } catch (e) {
    showSignIn(e.status === 401 ? 'The controller refused this token: ' + e.message : e.message);
    return;
  }
  $('sign-in').hidden = true;
  $('nav').hidden = false;
  $('sign-out').hidden = false;
  $('who').textContent = `${ctx.name} (${ctx.role})`;
  $('who').dataset.role = ctx.role;
  if (!location.hash || location.hash === '#') location.hash = '#/fleet';
  else route();
}

function route() {
  if (!ctx) return;
  const hash = location.hash || '#/fleet';
  for (const [re, nav, mount] of ROUTES) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.dataset.nav === nav);
    const page = $('page');
    fill(page);
    generation++;
    current = mount(page, ctx, m);
    poll(generation);
    return;
  }
  location.hash = '#/fleet';
}

async function poll(gen) {
  clearTimeout(timer);
  if (!current || gen !== generation) return;
  try {
    await current.refresh();
  } catch (e) {
    // 401: the token was revoked meanwhile. Anything else the page shows, or the banner does.
    if (e.status === 401) return showSignIn('The controller no longer accepts this token: ' + e.message);
  }
  if (gen === generation) timer = setTimeout(() => poll(gen), POLL_MS);
}

api.onReachability((ok, why) => {
  const banner = $('unreachable');
  banner.hidden = ok;
  banner.textContent = ok ? '' : `Controller unreachable: ${why}. Showing the last data; retrying every ${POLL_MS / 1000} s.`;
});

$('sign-in').addEventListener('submit', (ev) => {
  ev.preventDefault();
  api.token.set($('token').value.trim());
  $('token').value = '';
  signIn();
});
$('sign-out').addEventListener('click', () => showSignIn(''));
window.addEventListener('hashchange', route);

if (api.token.get()) signIn();
else showSignIn('');
