// The controller's HTTP API as the dashboard uses it: the token (kept in sessionStorage, so it
// lives as long as the tab), the Authorization header, the API's error object, and whether
// the controller answers at all (listeners hear every change, for the "unreachable" banner).

const TOKEN_KEY = 'ota.apiToken';

export class ApiError extends Error {
  // status: the HTTP status (0: no answer); field: the request field at fault, if the API named one.
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field || '';
  }
}

let reachable = true;
const reachabilityListeners = [];
export function onReachability(fn) { reachabilityListeners.push(fn); }
function setReachable(ok, why) {
  if (ok === reachable) return;
  reachable = ok;
  for (const fn of reachabilityListeners) fn(ok, why);
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

// One request. Resolves to {body, headers}; rejects with an ApiError carrying the API's
// message and field, or status 0 when the controller did not answer.
export async function request(method, path, { body, contentType, signal } = {}) {
  const headers = { Authorization: 'Bearer ' + token.get() };
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = contentType || 'application/json';
    payload = contentType ? body : JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    setReachable(false, 'no answer from the controller (' + e.message + ')');
    throw new ApiError(0, 'the controller did not answer: ' + e.message);
  }
  // A proxy in front of a stopped controller answers 502/503/504.
  if (res.status === 502 || res.status === 503 || res.status === 504) {
    setReachable(false, 'the controller is unavailable (HTTP ' + res.status + ')');
  } else {
    setReachable(true);
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!res.ok) {
    const err = json && json.error;
    const message = err && typeof err === 'object' ? err.message : (err || text || ('HTTP ' + res.status));
    throw new ApiError(res.status, message, err && err.field);
  }
  return { body: json, headers: res.headers };
}

export const get = async (path, opts) => (await request('GET', path, opts)).body;
export const post = async (path, body) => (await request('POST', path, { body })).body;

// A page of a list: {items, total} (X-Total-Count).
export async function page(path) {
  const { body, headers } = await request('GET', path);
  return { items: body, total: Number(headers.get('X-Total-Count') || body.length) };
}

// Query string from an object, leaving out empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined && v !== null) q.set(k, v);
  const s = q.toString();
  return s ? '?' + s : '';
}
