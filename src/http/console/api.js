// Calls to Warren's /v1 endpoints: JSON in and out, the bearer token the
// operator gave (kept in sessionStorage: this tab only), and problems
// (application/problem+json) thrown as ApiError.

import { $, ask, clearNotice, notify } from './dom.js';

const KEY = 'warren.console.token';

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || { title: `HTTP ${status}` };
  }
}

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
  showTokenState();
}

export function showTokenState() {
  $('token-state').textContent = token() ? 'token set' : 'no token';
}

// One prompt at a time: calls that meet a 401 together wait for it.
let prompting = null;

// Asks for a token; resolves true when one was given.
export function promptToken(why) {
  if (!prompting) {
    prompting = (async () => {
      $('token-why').textContent = why ||
        'Paste a bearer token (a client\'s token or a JWT) with admin permission.';
      const input = $('token-input');
      input.value = '';
      const answer = await ask($('token-dialog'));
      if (answer === 'ok' && input.value.trim()) setToken(input.value.trim());
      else if (answer === 'clear') setToken('');
      input.value = '';
      return answer === 'ok' && !!token();
    })().finally(() => { prompting = null; });
  }
  return prompting;
}

// `api('GET', '/v1/queues')`, `api('POST', path, body)`: the answer's JSON.
// A 401 asks for a token and tries once more with it; a 403 says the token
// lacks admin permission. Other failures throw ApiError with the problem.
export async function api(method, path, body, { retried = false } = {}) {
  const headers = { Accept: 'application/json, application/problem+json' };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { title: 'Warren unreachable', detail: String(e.message || e) });
  }
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (response.ok) return json;
  const problem = json && typeof json === 'object' ? json : { title: `HTTP ${response.status}`, detail: text };
  if (response.status === 401 && !retried) {
    const why = token()
      ? `Warren refused the token: ${problem.detail || 'unauthenticated'}. Paste another.`
      : 'This Warren needs a credential. Paste a bearer token (a client\'s token or a JWT) with admin permission.';
    if (await promptToken(why)) return api(method, path, body, { retried: true });
  }
  if (response.status === 403) {
    const error = new ApiError(403, {
      ...problem,
      title: 'Forbidden: needs admin',
      detail: `${problem.detail || 'this token may not do that'}. The console needs a token with admin permission.`,
    });
    throw error;
  }
  throw new ApiError(response.status, problem);
}

// Runs a call for a button: errors go to the banner, success clears it
// (unless `clear` is false: the queues' periodic refresh).
export async function run(fn, { clear = true } = {}) {
  try {
    const out = await fn();
    if (clear) clearNotice();
    return out;
  } catch (e) {
    if (e instanceof ApiError) notify(e.problem.title || `HTTP ${e.status}`, e.problem.detail || '');
    else notify('Error', String(e && e.message ? e.message : e));
    return undefined;
  }
}

export function wireToken(onChange) {
  showTokenState();
  $('token-change').addEventListener('click', async () => {
    await promptToken('Paste a bearer token with admin permission, or Forget the one in use.');
    onChange();
  });
}

export const enc = encodeURIComponent;
