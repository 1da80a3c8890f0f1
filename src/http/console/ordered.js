// Blocked keys of an ordered group (`GET /v1/ordered/{group}/blocked`):
// each key's held message, why, since when and how many wait behind it;
// retry (optionally corrected) delivers it again first, skip dead-letters
// it; either way the key's waiting messages follow in order.

import { api, enc, run } from './api.js';
import { $, confirmAction, el, loaded, notify, plural } from './dom.js';
import { editMessage, messageView } from './message.js';

export function orderedPage() {
  const select = $('ord-group');
  const list = $('ord-list');
  let group = '';
  let blocked = [];

  const load = ({ clear = true } = {}) => run(async () => {
    group = select.value;
    if (!group) { render([]); return; }
    const answer = await api('GET', `/v1/ordered/${enc(group)}/blocked`);
    render(answer.blocked || []);
    loaded(`ordered:${group}:${blocked.length}`);
  }, { clear });

  const render = (next) => {
    blocked = next;
    list.replaceChildren(...blocked.map((b, index) => el('li', { class: 'letter blocked', dataset: { key: b.key } },
      el('div', { class: 'summary' },
        el('code', { class: 'id' }, b.key),
        el('span', { class: 'reason' }, b.reason),
        el('span', { title: 'blocked since' }, `since ${new Date(b.since_ms).toLocaleString()}`),
        el('span', { class: 'waiting' }, `${plural(b.waiting, 'message')} waiting`)),
      el('span', { class: 'actions' },
        el('button', { type: 'button', dataset: { act: 'edit', index } }, 'Edit & retry'),
        el('button', { type: 'button', dataset: { act: 'retry', index } }, 'Retry'),
        el('button', { type: 'button', class: 'danger', dataset: { act: 'skip', index } }, 'Skip')),
      messageView(b.message))));
    if (!blocked.length) list.append(el('li', { class: 'muted empty' }, group ? 'No blocked keys.' : 'No ordered group configured.'));
  };

  const release = async (b, act, patch) => {
    const corrected = patch && Object.keys(patch).length ? ' corrected' : '';
    const text = act === 'skip'
      ? `Skip key ${b.key}? Its held message goes to the group's dead-letter queue; the ${plural(b.waiting, 'waiting message')} follow.`
      : `Retry${corrected} the held message of key ${b.key}? It is delivered again first, then the ${plural(b.waiting, 'waiting message')}.`;
    if (!(await confirmAction(text, act === 'skip' ? 'Skip' : 'Retry'))) return;
    const body = patch && Object.keys(patch).length ? { message: patch } : undefined;
    const done = await run(() => api('POST', `/v1/ordered/${enc(group)}/blocked/${enc(b.key)}/${act}`, body));
    if (done) {
      notify(`Key ${done.key}: ${act === 'skip' ? 'skipped' : 'retried'}`, '', 'ok');
      await load({ clear: false });
    }
  };

  list.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-act]');
    if (!button) return;
    const b = blocked[Number(button.dataset.index)];
    if (button.dataset.act !== 'edit') return release(b, button.dataset.act);
    const patch = await editMessage(`Correct the held message of ${b.key}`, b.message, 'Retry corrected');
    if (patch) await release(b, 'retry', patch);
  });
  $('ord-load').addEventListener('click', () => load());
  select.addEventListener('change', () => load());

  return {
    queues(queues, wanted) {
      const names = queues.filter((q) => q.kind === 'ordered_group').map((q) => q.name);
      if (wanted && !names.includes(wanted)) names.push(wanted);
      const current = wanted || select.value;
      const same = names.length === select.options.length &&
        names.every((n, i) => select.options[i].value === n);
      if (!same) select.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
      if (current && names.includes(current)) select.value = current;
    },
    async show(wanted) {
      if (wanted && wanted !== group) { select.value = wanted; await load(); }
      else await load();
    },
  };
}
