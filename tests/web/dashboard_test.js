// Drives Debian's chromium (headless, through playwright-core) through the web dashboard of a
// real controller with simulated devices, which tests/integration/web_ui_test.cpp started.
// Every wait is a condition with a deadline; every count the page shows is compared with
// the API's own answer. Exit 0 when every step passed; 1 naming the step that failed (and a
// screenshot of the page then, failure.png in the artifacts directory).
//
// Environment: OTA_WEB_URL (http://127.0.0.1:PORT), OTA_WEB_OPERATOR_TOKEN,
// OTA_WEB_READONLY_TOKEN, OTA_WEB_GROUP, OTA_WEB_IMAGE (rolled out from the form),
// OTA_WEB_IMAGE2 (the rollout that is paused), OTA_WEB_FAILING_DEVICE (its new image fails
// its self-test), OTA_WEB_ARTIFACTS (screenshots),
// OTA_CHROMIUM (default /usr/bin/chromium).
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');

const env = (k) => {
  if (!process.env[k]) throw new Error(`dashboard_test: environment variable ${k} is not set`);
  return process.env[k];
};
const URL_BASE = env('OTA_WEB_URL');
const OPERATOR = env('OTA_WEB_OPERATOR_TOKEN');
const READONLY = env('OTA_WEB_READONLY_TOKEN');
const GROUP = env('OTA_WEB_GROUP');
const IMAGE = env('OTA_WEB_IMAGE');
const IMAGE2 = env('OTA_WEB_IMAGE2');
const ARTIFACTS = env('OTA_WEB_ARTIFACTS');
const FAILING = env('OTA_WEB_FAILING_DEVICE');
const CHROMIUM = process.env.OTA_CHROMIUM || '/usr/bin/chromium';

// --- the API, from node (what the page must agree with)
async function api(method, p, tokenValue, body) {
  const res = await fetch(URL_BASE + p, {
    method,
    headers: { Authorization: 'Bearer ' + tokenValue, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, total: Number(res.headers.get('X-Total-Count')) };
}
const apiGet = async (p) => {
  const r = await api('GET', p, OPERATOR);
  if (r.status !== 200) throw new Error(`GET ${p} -> ${r.status} ${JSON.stringify(r.body)}`);
  return r;
};
const devicesTotal = async (q) => (await apiGet('/api/v1/devices?limit=1&' + q)).total;

// Polls `check` (async; returns [ok, description]) until ok or the deadline.
async function until(what, check, ms = 20000) {
  const deadline = Date.now() + ms;
  let last = '';
  for (;;) {
    const [ok, description] = await check();
    last = description;
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function assert(cond, message) { if (!cond) throw new Error(message); }

const text = async (page, selector) => ((await page.locator(selector).first().textContent({ timeout: 15000 })) || '').trim();
const attr = (page, selector, name) => page.locator(selector).first().getAttribute(name, { timeout: 15000 });

async function signIn(page, tokenValue) {
  if (await page.locator('#sign-out').isVisible()) await page.click('#sign-out');
  await page.waitForSelector('#sign-in:not([hidden])', { timeout: 15000 });
  await page.fill('#token', tokenValue);
  await page.click('#sign-in button[type=submit]');
  await page.waitForSelector('#nav:not([hidden])', { timeout: 15000 });
}

async function go(page, hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
}

const steps = [];
async function step(name, fn) {
  const t0 = Date.now();
  await fn();
  steps.push(name);
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
}

async function main() {
  const started = Date.now();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // As root chromium needs --no-sandbox; /dev/shm may be small in containers.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 960 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) pageErrors.push(m.text()); });
  try {
    let rolloutA = '';
    let rolloutB = '';

    await step('a wrong token is refused with the server\'s reason, the operator token signs in', async () => {
      const res = await page.goto(URL_BASE + '/');
      assert(res.url().endsWith('/ui/'), `/ redirects to /ui/, got ${res.url()}`);
      await page.fill('#token', 'not-a-token');
      await page.click('#sign-in button[type=submit]');
      await until('sign-in error', async () => {
        const t = await text(page, '#sign-in-error');
        return [/refused this token: missing or wrong API token/.test(t), t];
      });
      await signIn(page, OPERATOR);
      assert((await attr(page, '#who', 'data-role')) === 'operator', 'whoami role operator');
    });

    await step('fleet counts equal the API\'s', async () => {
      await go(page, '#/fleet');
      const fleet = (await apiGet('/api/v1/fleet')).body;
      const expected = {
        total: await devicesTotal(''),
        online: await devicesTotal('online=true'),
        offline: await devicesTotal('online=false'),
      };
      assert(expected.total === fleet.total && expected.online === fleet.online, `GET /fleet ${JSON.stringify(fleet)} agrees with GET /devices ${JSON.stringify(expected)}`);
      assert(expected.total > 0, 'the fleet is not empty');
      await until('count tiles', async () => {
        const shown = {};
        for (const k of Object.keys(expected)) shown[k] = Number(await text(page, `[data-count="${k}"]`).catch(() => 'NaN'));
        return [JSON.stringify(shown) === JSON.stringify(expected), `page ${JSON.stringify(shown)} api ${JSON.stringify(expected)}`];
      });
      for (const [version, n] of Object.entries(fleet.by_version)) {
        const byFilter = await devicesTotal('version=' + encodeURIComponent(version));
        const shown = Number(await attr(page, `#by-version g[data-version="${version}"]`, 'data-count'));
        assert(shown === n && n === byFilter, `version ${version}: page ${shown}, /fleet ${n}, /devices?version ${byFilter}`);
      }
      for (const [hw, n] of Object.entries(fleet.by_hw)) {
        const shown = Number(await attr(page, `#by-hw g[data-hw="${hw}"]`, 'data-count'));
        assert(shown === n, `hw ${hw}: page ${shown}, api ${n}`);
      }
      await until('device table total', async () => {
        const t = await attr(page, '#devices-range', 'data-total');
        return [Number(t) === expected.total, `page ${t} api ${expected.total}`];
      });
      const rows = await page.locator('#devices tbody tr').count();
      assert(rows === Math.min(25, expected.total), `one page of rows: ${rows}`);
    });

    await step('device search and filters ask the server', async () => {
      const prefix = 'web-00';
      const expected = await devicesTotal('tag=' + encodeURIComponent(`id=${prefix}*`));
      const all = await devicesTotal('');
      assert(expected > 0 && expected < all, `the search narrows the list (${expected} of ${all})`);
      await page.fill('#f-search', prefix);
      await until('search result', async () => {
        const t = Number(await attr(page, '#devices-range', 'data-total'));
        return [t === expected, `page ${t} api ${expected}`];
      });
      await page.fill('#f-search', '');
      await page.fill('#f-tag', 'site=berlin');
      const berlin = await devicesTotal('tag=site%3Dberlin');
      await until('tag filter', async () => {
        const t = Number(await attr(page, '#devices-range', 'data-total'));
        return [t === berlin, `page ${t} api ${berlin}`];
      });
      await page.fill('#f-tag', 'site=');
      await until('bad tag expression named', async () => {
        const t = await text(page, '#f-tag-error');
        return [t.startsWith('tag:'), t];
      });
      await page.fill('#f-tag', '');
      const first = await page.locator('#devices tbody tr').first().getAttribute('data-device');
      await page.click(`#devices tbody tr[data-device="${first}"] a`);
      const dev = (await apiGet('/api/v1/devices/' + first)).body;
      await until('device page', async () => {
        const t = await text(page, '#device-summary').catch(() => '');
        return [t.includes(dev.version) && t.includes(dev.hw), t];
      });
    });

    await step('a bad form field shows the server\'s error next to it', async () => {
      const before = (await apiGet('/api/v1/rollouts?limit=1')).total;
      await go(page, '#/rollouts/new');
      await page.waitForSelector(`#rollout-form select[name=image] option[value="${IMAGE}"]`, { state: 'attached', timeout: 15000 });
      await page.selectOption('select[name=image]', IMAGE);
      await page.selectOption('select[name=target_kind]', 'group');
      await page.fill('input[name=target_value]', GROUP);
      const members = (await apiGet('/api/v1/fleet?group=' + GROUP)).body.total;
      await until('live count of matched devices', async () => {
        const n = await attr(page, '#match-count', 'data-count');
        return [Number(n) === members, `page ${n} api ${members}`];
      });
      await page.fill('[data-wave-row="0"] input[name=size]', '150%');
      await page.click('#create-rollout');
      await until('wave size error', async () => {
        const t = await text(page, '[data-error-for="waves[0].size"]');
        return [t.includes("waves[0].size '150%'"), t];
      });
      assert((await attr(page, '[data-wave-row="0"] input[name=size]', 'aria-invalid')) === 'true', 'the wave size input is marked');
      await page.fill('[data-wave-row="0"] input[name=size]', '25%');
      await page.fill('input[name="failure.max_wave_rate"]', '250');
      await page.click('#create-rollout');
      await until('failure rate error', async () => {
        const t = await text(page, '[data-error-for="failure.max_wave_rate"]');
        return [t.includes('failure.max_wave_rate 250 is not in 0..100'), t];
      });
      assert((await text(page, '[data-error-for="waves[0].size"]')) === '', 'the fixed field\'s error is gone');
      assert((await apiGet('/api/v1/rollouts?limit=1')).total === before, 'no rollout was created');
      // One device of the fleet fails: limits that let the rollout finish anyway.
      await page.fill('input[name="failure.max_wave_rate"]', '50');
      await page.fill('input[name="failure.max_total_rate"]', '50');
    });

    await step('a rollout started from the form advances to completion without a reload', async () => {
      await page.fill('input[name=name]', 'web dashboard rollout');
      await page.evaluate(() => { window.__sameDocument = true; });
      await page.click('#create-rollout');
      await page.waitForFunction(() => /^#\/rollouts\/ro-/.test(location.hash), null, { timeout: 20000 });
      rolloutA = (await page.evaluate(() => location.hash)).slice('#/rollouts/'.length);
      const seen = new Set();
      await until('rollout completes on the page', async () => {
        // One read of both: the element is redrawn between two separate reads.
        const [p, st] = await page.evaluate(() => {
          const o = document.getElementById('overall');
          return o ? [o.dataset.percent, o.dataset.state] : [null, null];
        });
        if (p !== null) seen.add(Number(p));
        return [st === 'completed', `state ${st} percent ${p}`];
      }, 60000);
      const r = (await apiGet('/api/v1/rollouts/' + rolloutA)).body;
      assert(r.state === 'completed' && r.counts.succeeded === r.devices_total - 1 && r.counts.failed === 1,
        `API: ${r.state}, ${r.counts.succeeded}/${r.devices_total} succeeded, ${r.counts.failed} failed`);
      const rate = await attr(page, '#failure-rate', 'data-rate');
      assert(Number(rate) === r.failure_rate.total, `failure rate on the page ${rate}, API ${r.failure_rate.total}`);
      assert((await text(page, '#failure-rate')).includes('the policy allows 50% overall and 50% per wave'), 'the policy next to the rate');
      assert((await page.locator('button[data-action="retry"]').count()) === 1, 'retry offered for the failed device');
      assert(r.name === 'web dashboard rollout' && r.version === IMAGE, `API has the form's rollout: ${r.name} ${r.version}`);
      assert(r.policy.waves.length === 2 && r.policy.waves[0].size === '25%', `the form's waves: ${JSON.stringify(r.policy.waves)}`);
      assert([...seen].some((p) => p < 100) && seen.has(100), `progress advanced on the page: ${[...seen].join(', ')}`);
      assert(await page.evaluate(() => window.__sameDocument === true), 'the page was not reloaded');
      const waves = await page.locator('#waves [data-wave]').count();
      assert(waves === 2, `two wave bars: ${waves}`);
      for (let i = 0; i < waves; i++) {
        const wp = await attr(page, `#waves [data-wave="${i}"]`, 'data-percent');
        assert(wp === '100', `wave ${i} at 100%: ${wp}`);
      }
      await until('events of the rollout', async () => {
        const n = await page.locator('#rollout-events tr[data-what="rollout_completed"]').count();
        return [n === 1, `${n} rollout_completed rows`];
      });
      await page.screenshot({ path: path.join(ARTIFACTS, 'rollout.png'), fullPage: true });
      // The failed device's page: its last error with the reason, its history.
      const dev = (await apiGet('/api/v1/devices/' + FAILING)).body;
      assert(dev.last_error !== '', `the API names ${FAILING}'s last error`);
      await go(page, '#/devices/' + FAILING);
      await until('last error on the device page', async () => {
        const t = await text(page, '#device-error').catch(() => '');
        return [t.includes(dev.last_error), `page "${t}" api "${dev.last_error}"`];
      });
      const failedRow = dev.deployments.find((row) => row.state === 'failed');
      assert(failedRow && (await text(page, '#device-history')).includes(failedRow.reason), `history shows the failure reason ${failedRow && failedRow.reason}`);
    });

    await step('pause on the page pauses the rollout in the API; abort names what it cancels', async () => {
      const created = await api('POST', '/api/v1/rollouts', OPERATOR, {
        image: IMAGE2, name: 'soaking canary', target: { group: GROUP },
        waves: [{ size: 1, soak: '1h' }, { size: '100%' }], start: true,
        failure: { max_wave_rate: 100, max_total_rate: 100 },  // the canary may be the failing device
      });
      assert(created.status === 201, `create ${created.status} ${JSON.stringify(created.body)}`);
      rolloutB = created.body.id;
      // The canary finishes and the wave soaks: nothing moves while the page is compared.
      await until('canary of the soaking rollout final', async () => {
        const r = (await apiGet('/api/v1/rollouts/' + rolloutB)).body;
        return [r.counts.succeeded + r.counts.failed === 1 && r.state === 'running', `${r.state} ${JSON.stringify(r.counts)}`];
      }, 20000);
      await go(page, '#/rollouts/' + rolloutB);
      await page.click('button[data-action="pause"]', { timeout: 15000 });
      await until('paused on the page', async () => {
        const st = await attr(page, '#overall', 'data-state');
        return [st === 'paused', st];
      });
      const paused = (await apiGet('/api/v1/rollouts/' + rolloutB)).body;
      assert(paused.state === 'paused' && paused.paused_by === 'operator', `API: ${paused.state} by ${paused.paused_by}`);
      await page.click('button[data-action="resume"]', { timeout: 15000 });
      await until('running again on the page', async () => {
        const st = await attr(page, '#overall', 'data-state');
        return [st === 'running', st];
      });
      const r = (await apiGet('/api/v1/rollouts/' + rolloutB)).body;
      assert(r.state === 'running', `API after resume: ${r.state}`);
      await page.click('button[data-action="abort"]');
      const c = r.counts;
      const cancels = c.pending + c.deferred + c.offered + c.downloading;
      const confirmText = await text(page, '#confirm-text');
      assert(confirmText.includes(`cancels ${cancels} device`), `confirmation names ${cancels}: ${confirmText}`);
      await page.click('#confirm-abort');
      await until('aborted on the page', async () => {
        const st = await attr(page, '#overall', 'data-state');
        return [st === 'aborted', st];
      });
      const after = (await apiGet('/api/v1/rollouts/' + rolloutB)).body;
      assert(after.state === 'aborted', `API: ${after.state}`);
    });

    await step('an image uploaded from the page is the API\'s; a missing field is named', async () => {
      await go(page, '#/images');
      await page.waitForSelector('#upload-form', { timeout: 15000 });
      const bytes = Buffer.alloc(8192);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + 3) & 0xff;
      const sha256 = require('crypto').createHash('sha256').update(bytes).digest('hex');
      await page.setInputFiles('#upload-form input[name=file]', { name: 'fw-1.3.0.bin', mimeType: 'application/octet-stream', buffer: bytes });
      await page.fill('#upload-form input[name=version]', '1.3.0');
      await page.click('#upload-form button[type=submit]');
      await until('hw named', async () => {
        const t = await text(page, '#upload-form [data-error-for="hw"]');
        return [t.includes("query parameter 'hw' is required"), t];
      });
      await page.fill('#upload-form input[name=hw]', 'board-x');
      await page.click('#upload-form button[type=submit]');
      await until('upload done', async () => {
        const t = await text(page, '#upload-status');
        return [t.startsWith('added 1.3.0'), t];
      });
      const img = (await apiGet('/api/v1/images/1.3.0')).body;
      assert(img.sha256 === sha256 && img.size === bytes.length && img.hw.join() === 'board-x', `API image: ${JSON.stringify(img)}`);
      await page.waitForSelector(`#images tr[data-image="${img.id}"]`, { timeout: 15000 });
    });

    await step('a read-only token sees no action buttons, and the server refuses its actions', async () => {
      await signIn(page, READONLY);
      assert((await attr(page, '#who', 'data-role')) === 'read-only', 'whoami role read-only');
      await go(page, '#/rollouts/' + rolloutA);
      await until('rollout page', async () => [(await attr(page, '#overall', 'data-state').catch(() => null)) === 'completed', 'state']);
      assert((await page.locator('button[data-action]').count()) === 0, 'no action buttons on the rollout page');
      await go(page, '#/rollouts');
      await page.waitForSelector(`#rollouts tr[data-rollout="${rolloutA}"]`, { timeout: 15000 });
      assert((await page.locator('#new-rollout').count()) === 0, 'no "New rollout"');
      await go(page, '#/images');
      await page.waitForSelector('#images tbody tr', { timeout: 15000 });
      assert((await page.locator('#upload-form').count()) === 0, 'no upload form');
      // The page's own token, as a forged button would send it.
      const refused = await page.evaluate(async (id) => {
        const res = await fetch(`/api/v1/rollouts/${id}/retry`, { method: 'POST',
          headers: { Authorization: 'Bearer ' + sessionStorage.getItem('ota.apiToken'), 'Content-Type': 'application/json' }, body: '{}' });
        return { status: res.status, body: await res.json() };
      }, rolloutA);
      assert(refused.status === 403 && refused.body.error.code === 'forbidden' &&
        refused.body.error.message.includes('has role read-only'), `server refusal: ${JSON.stringify(refused)}`);
    });

    await step('images list what the API has', async () => {
      const imgs = (await apiGet('/api/v1/images')).body;
      for (const img of imgs) {
        const row = await text(page, `#images tr[data-image="${img.id}"]`);
        assert(row.includes(img.version) && row.includes(img.sha256), `image ${img.version} row: ${row}`);
      }
      const rowA = await text(page, `#images tr[data-image="${imgs.find((i) => i.version === IMAGE).id}"]`);
      assert(rowA.includes(rolloutA), `image ${IMAGE} names the rollout that deployed it: ${rowA}`);
    });

    await step('an unreachable controller shows a banner, and it goes when it answers again', async () => {
      await page.route('**/api/v1/**', (route) => route.abort('connectionrefused'));
      await page.waitForSelector('#unreachable:not([hidden])', { timeout: 15000 });
      assert(/Controller unreachable/.test(await text(page, '#unreachable')), 'banner text');
      await page.unroute('**/api/v1/**');
      await page.waitForSelector('#unreachable[hidden]', { state: 'attached', timeout: 15000 });
    });

    await step('fleet page screenshot with the versions chart', async () => {
      await go(page, '#/fleet');
      await until('versions chart lines', async () => {
        const n = await page.locator('#versions-chart polyline').count();
        return [n >= 2, `${n} lines`];
      });
      const fleet = (await apiGet('/api/v1/fleet')).body;
      await until('tiles after the rollout', async () => {
        const shown = Number(await attr(page, `#by-version g[data-version="${IMAGE}"]`, 'data-count').catch(() => NaN));
        return [shown === fleet.by_version[IMAGE], `page ${shown} api ${fleet.by_version[IMAGE]}`];
      });
      await page.screenshot({ path: path.join(ARTIFACTS, 'fleet.png'), fullPage: true });
    });

    assert(pageErrors.length === 0, 'errors in the page: ' + pageErrors.join(' | '));
    console.log(`dashboard_test: ${steps.length} steps passed in ${Date.now() - started} ms`);
  } catch (e) {
    await page.screenshot({ path: path.join(ARTIFACTS, 'failure.png'), fullPage: true }).catch(() => {});
    console.error(`not ok - after ${steps.length} steps: ${e.message}`);
    if (pageErrors.length) console.error('errors in the page: ' + pageErrors.join(' | '));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error('dashboard_test: ' + (e.stack || e)); process.exit(1); });
