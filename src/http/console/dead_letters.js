// Dead letters: pick a dead-letter queue (the queues listing's kind
// dead_letter), list its messages without removing them
// (`GET /v1/dead-letters/{dlq}?limit=N`), replay (optionally corrected) or
// discard one or the selected.

import { api, enc, run } from './api.js';
import { $, el, loaded, notify, plural } from './dom.js';
import { letterList } from './letters.js';

export function deadLetters() {
  const select = $('dl-queue');
  const limit = $('dl-limit');
  let dlq = '';

  const load = ({ clear = true } = {}) => run(async () => {
    dlq = select.value;
    if (!dlq) { none(); return; }
    const n = Math.max(1, Math.min(1000, Number(limit.value) || 100));
    const answer = await api('GET', `/v1/dead-letters/${enc(dlq)}?limit=${n}`);
    list.render(answer.messages || []);
    loaded(`dead-letters:${dlq}:${(answer.messages || []).length}`);
  }, { clear });

  const list = letterList({
    list: $('dl-list'), all: $('dl-all'), count: $('dl-count'),
    replay: $('dl-replay-selected'), discard: $('dl-discard-selected'),
  }, {
    noun: 'dead letter',
    describe: (d) => [
      el('code', { class: 'id' }, d.id),
      el('span', { class: 'reason' }, d.reason),
      el('span', { class: 'queue', title: 'original queue' }, d.original_queue || '?'),
      el('span', { class: 'attempts', title: 'attempts' }, plural(d.attempts, 'attempt')),
    ],
    act: async (kind, chosen, patch) => {
      const body = { ids: [...new Set(chosen.map((d) => d.id))] };
      if (patch && Object.keys(patch).length) body.message = patch;
      const done = await run(() => api('POST', `/v1/dead-letters/${enc(dlq)}/${kind}`, body));
      if (done) {
        const n = kind === 'replay' ? done.replayed : done.discarded;
        const missing = done.missing?.length ? ` (not found: ${done.missing.join(', ')})` : '';
        notify(`${kind === 'replay' ? 'Replayed' : 'Discarded'} ${plural(n, 'message')}`, missing, 'ok');
        await load({ clear: false });
      }
    },
  });

  const none = () => {
    list.render([]);
    $('dl-list').firstChild.textContent = 'Warren knows no dead-letter queue.';
  };

  $('dl-load').addEventListener('click', () => load());
  select.addEventListener('change', () => load());

  return {
    // The queues listing changed: offer its dead-letter queues.
    queues(queues, wanted) {
      const names = queues.filter((q) => q.kind === 'dead_letter').map((q) => q.name);
      if (wanted && !names.includes(wanted)) names.push(wanted);
      const current = wanted || select.value;
      const same = names.length === select.options.length &&
        names.every((n, i) => select.options[i].value === n);
      if (!same) select.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
      if (current && names.includes(current)) select.value = current;
    },
    async show(wanted, options) {
      const n = options?.get('limit');
      if (n) limit.value = n;
      if (wanted) select.value = wanted;
      // Fresh each time the page is shown: dead letters come and go.
      if (select.value) await load();
      else none();
    },
  };
}
