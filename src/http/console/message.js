// A message as Warren's JSON gives it (`body` text or `body_base64`,
// `headers`, properties): shown as text (JSON pretty-printed), and edited
// into the `message` corrections that replay and retry take.

import { $, ask, el } from './dom.js';

// Headers Warren or the broker set on dead-lettering and retries: a replay
// removes them, so the editor leaves them out.
const SYSTEM = /^(x-death$|x-first-death-|x-last-death-|x-warren-)/;

function isJsonType(contentType) {
  return /(^|\/|\+)json\b/i.test(contentType || '');
}

// The body as JSON when it is JSON (by content type or by looking like an
// object or array), else null.
export function bodyJson(message) {
  if (typeof message.body !== 'string') return null;
  const text = message.body.trim();
  if (!isJsonType(message.content_type) && !/^[[{]/.test(text)) return null;
  try { return { value: JSON.parse(text) }; } catch { return null; }
}

// The body for reading: pretty JSON, the text, or a note and the base64.
export function bodyView(message) {
  const json = bodyJson(message);
  if (json) return JSON.stringify(json.value, null, 2);
  if (typeof message.body === 'string') return message.body;
  if (typeof message.body_base64 === 'string') return `(binary, base64)\n${message.body_base64}`;
  return '';
}

// One line for a list: the body's start.
export function bodyPreview(message, max = 120) {
  let text;
  const json = bodyJson(message);
  if (json) text = JSON.stringify(json.value);
  else if (typeof message.body === 'string') text = message.body;
  else text = '(binary)';
  text = text.replace(/\s+/g, ' ');
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

export function userHeaders(headers) {
  return Object.fromEntries(Object.entries(headers || {}).filter(([k]) => !SYSTEM.test(k)));
}

// A timestamp (seconds since the epoch) as ISO 8601, or the number when
// it is out of range.
function when(seconds) {
  const date = new Date(seconds * 1000);
  return Number.isNaN(date.getTime()) ? String(seconds) : date.toISOString();
}

const PROPS = ['content_type', 'content_encoding', 'message_id', 'correlation_id', 'type', 'app_id', 'priority', 'timestamp', 'reply_to'];

// The whole message: properties, headers and body, as text.
export function messageView(message) {
  const props = el('dl', { class: 'props' });
  for (const p of PROPS) {
    if (message[p] === undefined || message[p] === '' || message[p] === 0) continue;
    props.append(el('dt', {}, p), el('dd', {}, p === 'timestamp' ? when(message[p]) : message[p]));
  }
  const headers = message.headers && Object.keys(message.headers).length
    ? JSON.stringify(message.headers, null, 2) : '(none)';
  return el('div', { class: 'message' },
    props,
    el('h4', {}, 'Headers'),
    el('pre', { class: 'headers' }, headers),
    el('h4', {}, 'Body'),
    el('pre', { class: 'body' }, bodyView(message)));
}

// Opens the editor on `message`. Resolves with the corrections to send
// (only what changed: `{}` for none) or null when cancelled.
export async function editMessage(title, message, action = 'Send corrected') {
  const json = bodyJson(message);
  const start = {
    mode: json ? 'json' : 'text',
    body: typeof message.body_base64 === 'string' ? message.body_base64 : bodyView(message),
    headers: JSON.stringify(userHeaders(message.headers), null, 2),
  };
  $('editor-title').textContent = title;
  $('editor-ok').textContent = action;
  $('editor-body').value = start.body;
  $('editor-headers').value = start.headers;
  $('editor-json').checked = start.mode === 'json';
  $('editor-text').checked = start.mode === 'text';
  $('editor-error').textContent = '';
  const dialog = $('editor-dialog');
  dialog.oninput = () => { $('editor-error').textContent = ''; };
  for (;;) {
    if ((await ask(dialog)) !== 'ok') return null;
    try {
      return corrections(start, message);
    } catch (e) {
      $('editor-error').textContent = e.message;
    }
  }
}

function corrections(start, message) {
  const mode = $('editor-json').checked ? 'json' : 'text';
  const bodyText = $('editor-body').value;
  const headersText = $('editor-headers').value;
  const patch = {};
  if (bodyText !== start.body || mode !== start.mode) {
    if (mode === 'json') {
      let value;
      try { value = JSON.parse(bodyText); } catch (e) { throw new Error(`The body is not JSON: ${e.message}`); }
      // A JSON string is sent as JSON text, not as the string's bytes.
      patch.body = typeof value === 'string' ? JSON.stringify(value) : value;
      if (!isJsonType(message.content_type)) patch.content_type = 'application/json';
    } else {
      patch.body = bodyText;
    }
  }
  if (headersText.trim() !== start.headers.trim()) {
    let headers;
    try { headers = JSON.parse(headersText || '{}'); } catch (e) { throw new Error(`The headers are not JSON: ${e.message}`); }
    if (!headers || typeof headers !== 'object' || Array.isArray(headers)) throw new Error('The headers must be a JSON object.');
    patch.headers = headers;
  }
  return patch;
}
