// Queues: what `GET /v1/queues` lists (name, kind, depth, consumers,
// paused), refreshed every two seconds while the page is shown, with pause
// (confirmed) and resume. Rows are kept by name and updated in place, so a
// refresh never moves a button under the pointer.

import { api, enc, run } from './api.js';
import { $, clearNotice, confirmAction, el, notify, showError } from './dom.js';

const EVERY_MS = 2000;

const KINDS = {
  queue: 'queue',
  dead_letter: 'dead letters',
  retry: 'retry delay',
  ordered_group: 'ordered group',
};

export function queuesPage({ onList }) {
  const rows = new Map();
  const body = $('queues-rows');
  let timer = null;
  let busy = false;

  const row = (q) => {
    let r = rows.get(q.name);
    if (!r) {
      r = {
        name: el('td', { class: 'name' }),
        kind: el('td', {}),
        messages: el('td', { class: 'num' }),
        consumers: el('td', { class: 'num' }),
        state: el('td', { class: 'state' }),
        action: el('button', { type: 'button', dataset: { queue: q.name } }),
      };
      r.tr = el('tr', { dataset: { queue: q.name } },
        r.name, r.kind, r.messages, r.consumers, r.state, el('td', {}, r.action));
      r.action.addEventListener('click', () => toggle(q.name, r.action.dataset.act));
      rows.set(q.name, r);
    }
    const link = q.kind === 'dead_letter' ? `#dead-letters/${enc(q.name)}`
      : q.kind === 'ordered_group' ? `#ordered/${enc(q.name)}` : null;
    r.name.replaceChildren(link ? el('a', { href: link }, q.name) : q.name);
    r.kind.textContent = KINDS[q.kind] || q.kind;
    r.messages.textContent = q.exists === false ? '–' : String(q.messages);
    r.consumers.textContent = q.exists === false ? '–' : String(q.consumers);
    r.state.textContent = q.exists === false ? 'missing' : q.paused ? 'paused' : 'running';
    r.tr.dataset.state = r.state.textContent;
    r.action.dataset.act = q.paused ? 'resume' : 'pause';
    r.action.textContent = q.paused ? 'Resume' : 'Pause';
    r.action.className = q.paused ? '' : 'danger';
    r.action.disabled = q.exists === false;
    return r.tr;
  };

  const refresh = async ({ clear = false } = {}) => {
    if (busy) return;
    busy = true;
    try {
      let answer;
      try {
        answer = await api('GET', '/v1/queues');
        if (clear) clearNotice();
      } catch (e) {
        showError(e);
        // Refused: no prompt every two seconds (a new token starts it again).
        if (e.status === 401 || e.status === 403) stop();
        return;
      }
      const queues = answer.queues || [];
      const seen = new Set(queues.map((q) => q.name));
      for (const [name, r] of rows) if (!seen.has(name)) { r.tr.remove(); rows.delete(name); }
      queues.forEach((q, i) => {
        const tr = row(q);
        if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
      });
      $('queues-empty').hidden = queues.length > 0;
      $('queues-updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.queues = String(queues.length);
      onList(queues);
    } finally {
      busy = false;
    }
  };

  const toggle = async (queue, act) => {
    if (act === 'pause' && !(await confirmAction(
      `Pause ${queue}? Warren's subscribers (on every Warren) get nothing from it until it is resumed.`, 'Pause'))) return;
    const info = await run(() => api('POST', `/v1/queues/${enc(queue)}/${act}`));
    if (info) notify(`${info.name} ${info.paused ? 'paused' : 'resumed'}`, '', 'ok');
    await refresh();
  };

  const stop = () => { clearInterval(timer); timer = null; };

  return {
    refresh,
    show() {
      refresh({ clear: true });
      if (!timer) timer = setInterval(() => { if (!document.hidden) refresh(); }, EVERY_MS);
    },
    hide: stop,
  };
}
