// The spool: `GET /v1/spool` (enabled, messages, bytes, max_bytes,
// oldest_seconds, dead, broker_connected; 404 or enabled false: off) and the dead-letter
// spool (`GET /v1/spool/dead`), whose messages are replayed (optionally
// corrected) or discarded like dead letters.

import { api, ApiError, run } from './api.js';
import { $, clearNotice, el, loaded, notify, plural, showError } from './dom.js';
import { letterList } from './letters.js';

function bytes(n) {
  if (!Number.isFinite(n)) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function seconds(s) {
  if (!s) return '–';
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function spoolPage() {
  const off = $('spool-off');
  const facts = $('spool-state');
  const dead = $('spool-dead');

  const list = letterList({
    list: $('spool-list'), all: $('spool-all'), count: $('spool-count'),
    replay: $('spool-replay-selected'), discard: $('spool-discard-selected'),
  }, {
    noun: 'spooled message',
    describe: (d) => [
      el('code', { class: 'id' }, d.id),
      el('span', { class: 'reason' }, d.reason),
      el('span', { class: 'queue', title: 'published to: exchange / routing key' },
        `${d.exchange || 'amq.default'} / ${d.routing_key ?? ''}`),
    ],
    act: async (kind, chosen, patch) => {
      const body = { ids: [...new Set(chosen.map((d) => d.id))] };
      if (patch && Object.keys(patch).length) body.message = patch;
      const done = await run(() => api('POST', `/v1/spool/dead/${kind}`, body));
      if (done) {
        const n = kind === 'replay' ? done.replayed : done.discarded;
        notify(`${kind === 'replay' ? 'Replayed' : 'Discarded'} ${plural(n, 'spooled message')}`, '', 'ok');
        await load({ clear: false });
      }
    },
  });

  const showOff = () => {
    off.hidden = false;
    facts.hidden = true;
    dead.hidden = true;
    loaded('spool:off');
  };

  const load = async ({ clear = true } = {}) => {
    let state;
    try {
      state = await api('GET', '/v1/spool');
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) { if (clear) clearNotice(); showOff(); return; }
      showError(e);
      return;
    }
    if (!state || !state.enabled) { if (clear) clearNotice(); showOff(); return; }
    off.hidden = true;
    facts.hidden = false;
    const full = state.max_bytes ? ` of ${bytes(state.max_bytes)} (${Math.round(100 * state.bytes / state.max_bytes)} %)` : '';
    facts.replaceChildren(
      el('dt', {}, 'Waiting to be forwarded'), el('dd', { id: 'spool-messages' }, plural(state.messages, 'message')),
      el('dt', {}, 'Size'), el('dd', {}, `${bytes(state.bytes)}${full}`),
      el('dt', {}, 'Oldest'), el('dd', {}, seconds(state.oldest_seconds)),
      el('dt', {}, 'Refused by the broker'), el('dd', { id: 'spool-dead-count' }, plural(state.dead, 'message')),
      state.broker_connected === undefined ? null : el('dt', {}, 'Forwarding'),
      state.broker_connected === undefined ? null
        : el('dd', { id: 'spool-forwarding' }, state.broker_connected ? 'yes: connected to the broker' : 'no: the broker is away'));
    const answer = await run(() => api('GET', '/v1/spool/dead?limit=1000'), { clear });
    dead.hidden = false;
    list.render(answer?.messages || []);
    loaded(`spool:on:${answer?.messages?.length ?? 0}`);
  };

  $('spool-load').addEventListener('click', () => load());
  return { show: () => load() };
}
