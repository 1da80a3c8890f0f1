// Warren's operator console: four pages chosen by the URL's fragment
// (#queues, #dead-letters/<dlq>, #ordered/<group>, #spool), each a module.
// Everything shown comes from Warren's /v1 endpoints.

import { wireToken } from './api.js';
import { $, clearNotice } from './dom.js';
import { deadLetters } from './dead_letters.js';
import { orderedPage } from './ordered.js';
import { queuesPage } from './queues.js';
import { spoolPage } from './spool.js';

let known = [];
const dead = deadLetters();
const ordered = orderedPage();
const spool = spoolPage();
const queues = queuesPage({
  onList: (list) => {
    known = list;
    const [page, arg] = route();
    dead.queues(known, page === 'dead-letters' ? arg : undefined);
    ordered.queues(known, page === 'ordered' ? arg : undefined);
  },
});

// `#page/arg?name=value`: the page, its queue or group, options.
function route() {
  const [path, query] = location.hash.replace(/^#/, '').split('?');
  const [page, ...rest] = path.split('/');
  const arg = rest.length ? decodeURIComponent(rest.join('/')) : undefined;
  const valid = ['queues', 'dead-letters', 'ordered', 'spool'].includes(page);
  return [valid ? page : 'queues', arg, new URLSearchParams(query || '')];
}

async function show() {
  const [page, arg, options] = route();
  for (const section of document.querySelectorAll('main > section')) {
    section.hidden = section.dataset.page !== page;
  }
  for (const link of document.querySelectorAll('nav a')) {
    if (link.dataset.page === page) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.body.dataset.page = page;
  if (page === 'queues') { queues.show(); return; }
  queues.hide();
  // The other pages pick their queue from the listing: have one first,
  // unless the link names the queue (then both load at once).
  if (!known.length) {
    const listing = queues.refresh({ clear: !arg });
    if (!arg) await listing;
  }
  if (page === 'dead-letters') { dead.queues(known, arg); await dead.show(arg, options); }
  if (page === 'ordered') { ordered.queues(known, arg); await ordered.show(arg); }
  if (page === 'spool') await spool.show();
}

$('notice-close').addEventListener('click', clearNotice);
wireToken(() => { show(); });
window.addEventListener('hashchange', show);
show().finally(() => { document.body.dataset.ready = '1'; });
