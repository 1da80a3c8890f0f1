// The console in a real browser (headless Chromium) against a real Warren
// and the local RabbitMQ: dead letters edited and replayed, discarded with
// confirmation; a queue paused and resumed; a blocked key retried
// corrected; the spool page (a message the broker really refused on
// forwarding, through a relay that cuts the broker off); the token prompt and a non-admin token's 403;
// and the first load's weight and time to interactive with 1,000 dead
// letters listed. Screenshots of each page go to docs/console/.

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  browser, call, cleanup, confirmDialog, depth, eventually, notice, ok, openPage, publish, relay, RUN, sha256, SHOTS,
  startWarren, subscribe,
} from './warren.mjs';
import { measure } from './measure.mjs';

const Q = {
  orders: `${RUN}.orders`,
  discard: `${RUN}.discard`,
  paused: `${RUN}.paused`,
  bulk: `${RUN}.bulk`,
  group: `${RUN}.group`,
};
const dlq = (q) => `${q}.dlq`;
// No test may hang the suite.
const LIMIT = 120_000;

const TOML = `
[retry]
max_attempts = 3
initial_backoff = "100ms"
max_backoff = "200ms"

[[topology.queues]]
name = "${Q.orders}"
type = "classic"

[[topology.queues]]
name = "${Q.discard}"
type = "classic"

[[topology.queues]]
name = "${Q.paused}"
type = "classic"

# Every message expires at once: dead-lettered (reason expired) to .dlq.
[[topology.queues]]
name = "${Q.bulk}"
type = "classic"
arguments = { x-message-ttl = 0 }

[[ordered]]
name = "${Q.group}"
partitions = 1
`;

let warren;
let chrome;
const tmp = mkdtempSync(join(tmpdir(), 'warren-console-test-'));

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  warren = await startWarren(TOML, 'open');
  chrome = await browser();
}, { timeout: LIMIT });

after(async () => {
  await chrome?.close();
  await warren?.stop();
  await cleanup([Q.orders, Q.discard, Q.paused, Q.bulk], [Q.group]);
}, { timeout: LIMIT });

// Dead-letters `bodies` into `queue`'s dead-letter queue through a
// subscriber's nack without requeue; ids are `${prefix}-1`, ...
async function deadLetter(queue, prefix, bodies) {
  for (const [i, body] of bodies.entries()) {
    await publish(warren, queue, body, { message_id: `${prefix}-${i + 1}` });
  }
  const sub = subscribe(warren, queue, bodies.length);
  for (let i = 0; i < bodies.length; i += 1) await sub.nack(await sub.next());
  await sub.close();
  await depth(warren, dlq(queue), bodies.length);
}

function consoleUrl(hash = '') {
  return `${warren.url}/console/${hash}`;
}

describe('console', () => {
  test('a dead letter is shown, its body corrected and replayed to its queue', { timeout: LIMIT }, async () => {
    await deadLetter(Q.orders, 'order', [{ id: 42, note: '<img src=x onerror=alert(1)>', qty: -1 }]);
    const page = await openPage(chrome, consoleUrl(`#dead-letters/${encodeURIComponent(dlq(Q.orders))}`));
    const row = page.locator('li.letter[data-id="order-1"]');
    await row.waitFor();
    assert.equal(await row.locator('.reason').textContent(), 'rejected');
    assert.equal(await row.locator('.queue').textContent(), Q.orders);
    assert.match(await row.locator('.attempts').textContent(), /attempt/);
    await row.locator('summary').click();
    const body = await row.locator('pre.body').textContent();
    assert.equal(body, JSON.stringify({ id: 42, note: '<img src=x onerror=alert(1)>', qty: -1 }, null, 2),
      'pretty-printed, as text');
    assert.equal(await page.locator('img').count(), 0, 'message content is never markup');
    await page.screenshot({ path: `${SHOTS}dead-letters.png` });

    await row.locator('button[data-act="edit"]').click();
    await page.locator('#editor-dialog[open]').waitFor();
    assert.ok((await page.inputValue('#editor-body')).includes('"qty": -1'));
    assert.ok(await page.isChecked('#editor-json'));
    // Not JSON: the editor says so and stays open.
    await page.fill('#editor-body', '{"id": 42, "qty": ');
    await page.click('#editor-ok');
    assert.match(await page.locator('#editor-error').textContent(), /not JSON/);
    await page.fill('#editor-body', '{"id": 42, "qty": 1}');
    await page.fill('#editor-headers', '{"x-fixed-by": "console"}');
    await page.screenshot({ path: `${SHOTS}editor.png` });
    await page.click('#editor-ok');
    assert.match(await confirmDialog(page), /Replay corrected dead letter order-1/);
    await notice(page, /Replayed 1 message/);
    await page.locator('#dl-list .empty').waitFor();

    const sub = subscribe(warren, Q.orders);
    const delivery = await sub.next();
    assert.deepEqual(JSON.parse(delivery.message.body), { id: 42, qty: 1 });
    assert.equal(delivery.message.headers['x-fixed-by'], 'console');
    assert.equal(delivery.message.message_id, 'order-1');
    await sub.ack(delivery);
    await sub.close();
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });

  test('discarding the selected dead letters asks first', { timeout: LIMIT }, async () => {
    await deadLetter(Q.discard, 'd', ['one', 'two', 'three']);
    const page = await openPage(chrome, consoleUrl(`#dead-letters/${encodeURIComponent(dlq(Q.discard))}`));
    await page.locator('li.letter[data-id="d-3"]').waitFor();
    await page.check('li.letter[data-id="d-1"] input.pick');
    await page.check('li.letter[data-id="d-2"] input.pick');
    assert.match(await page.locator('#dl-count').textContent(), /3 dead letters listed, 2 selected/);
    await page.click('#dl-discard-selected');
    assert.match(await confirmDialog(page, 'cancel'), /Discard 2 dead letters/);
    const kept = await ok(warren, 'GET', `/v1/dead-letters/${dlq(Q.discard)}?limit=10`);
    assert.equal(kept.messages.length, 3, 'cancelled: nothing discarded');

    await page.click('#dl-discard-selected');
    assert.match(await confirmDialog(page), /cannot be undone/);
    await notice(page, /Discarded 2 messages/);
    await page.waitForFunction(() => document.querySelectorAll('#dl-list li.letter[data-id]').length === 1);
    assert.equal(await page.locator('li.letter[data-id="d-3"]').count(), 1);
    const left = await ok(warren, 'GET', `/v1/dead-letters/${dlq(Q.discard)}?limit=10`);
    assert.deepEqual(left.messages.map((m) => m.id), ['d-3']);
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });

  test('a queue is paused (confirmed) and resumed; the listing refreshes by itself', { timeout: LIMIT }, async () => {
    const page = await openPage(chrome, consoleUrl('#queues'));
    const row = page.locator(`tr[data-queue="${Q.paused}"]`);
    await row.waitFor();
    assert.equal(await row.locator('td.state').textContent(), 'running');
    await publish(warren, Q.paused, 'waiting');
    // No reload: the two-second refresh shows the new depth.
    await page.waitForFunction((q) => document.querySelector(`tr[data-queue="${q}"] td:nth-child(3)`).textContent === '1',
      Q.paused, { timeout: 6000 });

    await row.locator('button').click();
    assert.match(await confirmDialog(page), new RegExp(`Pause ${Q.paused.replaceAll('.', '\\.')}`));
    await page.waitForFunction((q) => document.querySelector(`tr[data-queue="${q}"]`).dataset.state === 'paused', Q.paused);
    assert.equal((await ok(warren, 'GET', `/v1/queues/${Q.paused}`)).paused, true);
    await page.screenshot({ path: `${SHOTS}queues.png` });

    await row.locator('button', { hasText: 'Resume' }).click();
    await page.waitForFunction((q) => document.querySelector(`tr[data-queue="${q}"]`).dataset.state === 'running', Q.paused);
    assert.equal((await ok(warren, 'GET', `/v1/queues/${Q.paused}`)).paused, false);
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });

  test('a blocked key is retried with a corrected message, then its waiting ones follow', { timeout: LIMIT }, async () => {
    const key = 'customer-42';
    for (const body of [{ qty: -1 }, { qty: 2 }]) {
      await ok(warren, 'POST', '/v1/publish', { exchange: Q.group, ordering_key: key, body });
    }
    const sub = subscribe(warren, Q.group);
    const first = await sub.next();
    assert.deepEqual(JSON.parse(first.message.body), { qty: -1 });
    await sub.nack(first);

    const page = await openPage(chrome, consoleUrl(`#ordered/${encodeURIComponent(Q.group)}`));
    const item = page.locator(`li.blocked[data-key="${key}"]`);
    await item.waitFor();
    assert.match(await item.locator('.waiting').textContent(), /1 message waiting/);
    assert.equal(await item.locator('pre.body').textContent(), JSON.stringify({ qty: -1 }, null, 2));
    await page.screenshot({ path: `${SHOTS}ordered.png` });

    await item.locator('button[data-act="edit"]').click();
    await page.fill('#editor-body', '{"qty": 1}');
    await page.click('#editor-ok');
    assert.match(await confirmDialog(page), /Retry corrected the held message of key customer-42/);
    await notice(page, /customer-42: retried/);
    await page.locator('#ord-list .empty').waitFor();

    const retried = await sub.next();
    assert.deepEqual(JSON.parse(retried.message.body), { qty: 1 });
    await sub.ack(retried);
    const next = await sub.next();
    assert.deepEqual(JSON.parse(next.message.body), { qty: 2 });
    await sub.ack(next);
    await sub.close();
    assert.deepEqual(page.errors, []);
    await page.context().close();
  });

  test('a blocked key is skipped after confirmation', { timeout: LIMIT }, async () => {
    const key = 'customer-7';
    await ok(warren, 'POST', '/v1/publish', { exchange: Q.group, ordering_key: key, body: 'bad' });
    const sub = subscribe(warren, Q.group);
    await sub.nack(await sub.next());
    const page = await openPage(chrome, consoleUrl(`#ordered/${encodeURIComponent(Q.group)}`));
    const item = page.locator(`li.blocked[data-key="${key}"]`);
    await item.waitFor();
    await item.locator('button[data-act="skip"]').click();
    assert.match(await confirmDialog(page), /dead-letter queue/);
    await notice(page, /customer-7: skipped/);
    await sub.close();
    await depth(warren, dlq(Q.group), 1);
    await page.context().close();
  });

  test("Warren's problems are shown with their title and detail", { timeout: LIMIT }, async () => {
    const missing = `${RUN}.nope.dlq`;
    const page = await openPage(chrome, consoleUrl(`#dead-letters/${encodeURIComponent(missing)}`));
    const text = await notice(page, /Not Found/);
    const answer = await call(warren, 'GET', `/v1/dead-letters/${missing}?limit=1`);
    assert.equal(answer.status, 404);
    assert.ok(text.includes(answer.body.detail), `${text} shows ${answer.body.detail}`);
    assert.equal(await page.locator('#notice').getAttribute('data-kind'), 'error');
    await page.context().close();
  });

  test('the spool page says when the spool is off', { timeout: LIMIT }, async () => {
    const page = await openPage(chrome, consoleUrl('#spool'));
    await page.locator('#spool-off').waitFor({ state: 'visible' });
    const state = await call(warren, 'GET', '/v1/spool');
    assert.ok(state.status === 404 || state.body.enabled === false, 'this Warren has no spool');
    await page.context().close();
  });

  test("a Warren with the spool on: the page shows Warren's own state", { timeout: LIMIT }, async () => {
    const spooled = await startWarren(`[spool]\nenabled = true\ndir = "${join(tmp, 'spool')}"\n`, 'spool');
    try {
      const state = await ok(spooled, 'GET', '/v1/spool');
      assert.equal(state.enabled, true);
      const page = await openPage(chrome, `${spooled.url}/console/#spool`);
      await page.locator('#spool-state').waitFor({ state: 'visible' });
      assert.equal(await page.locator('#spool-messages').textContent(), `${state.messages} messages`);
      assert.match(await page.locator('#spool-forwarding').textContent(), /connected/);
      await page.locator('#spool-list .empty').waitFor();
      assert.equal(await page.locator('#spool-off').isVisible(), false);
      assert.deepEqual(page.errors, []);
      await page.context().close();
    } finally {
      await spooled.stop();
    }
  });

  test('the spool page lists the dead-letter spool and replays the selected', { timeout: LIMIT }, async () => {
    // The spool's endpoints answer these shapes (CONTRACT: Spool); the
    // browser is handed them so that the page is tested whatever this
    // Warren's spool holds.
    const page = await openPage(chrome);
    const posted = [];
    await page.route('**/v1/spool', (route) => route.fulfill({
      json: { enabled: true, messages: 12, bytes: 48_213, max_bytes: 1_073_741_824, oldest_seconds: 95, dead: 2, broker_connected: false },
    }));
    await page.route('**/v1/spool/dead?limit=*', (route) => route.fulfill({
      json: {
        messages: [
          { id: 'evt-1', reason: 'unroutable', exchange: 'billing', routing_key: 'invoice.paid', message: { body: '{"invoice":17}', content_type: 'application/json', message_id: 'evt-1' } },
          { id: 'evt-2', reason: 'exchange "gone" does not exist', exchange: 'gone', routing_key: 'x', message: { body: 'plain text', message_id: 'evt-2' } },
        ],
      },
    }));
    await page.route('**/v1/spool/dead/replay', (route) => {
      posted.push(route.request().postDataJSON());
      return route.fulfill({ json: { replayed: 1 } });
    });
    await page.goto(consoleUrl('#spool'));
    await page.locator('li.letter[data-id="evt-2"]').waitFor();
    assert.match(await page.locator('#spool-messages').textContent(), /12 messages/);
    assert.match(await page.locator('#spool-forwarding').textContent(), /broker is away/);
    assert.equal(await page.locator('li.letter[data-id="evt-1"] .queue').textContent(), 'billing / invoice.paid');
    await page.check('li.letter[data-id="evt-1"] input.pick');
    await page.locator('li.letter[data-id="evt-1"] summary').click();
    assert.equal(await page.locator('li.letter[data-id="evt-1"] pre.body').textContent(), JSON.stringify({ invoice: 17 }, null, 2));
    await page.screenshot({ path: `${SHOTS}spool.png` });
    await page.click('#spool-replay-selected');
    assert.match(await confirmDialog(page), /Replay spooled message evt-1/);
    await notice(page, /Replayed 1 spooled message/);
    assert.deepEqual(posted, [{ ids: ['evt-1'] }]);
    await page.context().close();
  });

  test('a message the broker really refused on forwarding is listed and discarded', { timeout: LIMIT }, async () => {
    // Warren reaches the broker through a relay: cut while the message is
    // published (so it is spooled), restored so that the forwarder meets
    // the missing exchange and moves it to the dead-letter spool.
    const link = await relay();
    const spooled = await startWarren(`[spool]\nenabled = true\ndir = "${join(tmp, 'spool-real')}"\n`, 'spool-real', link.url);
    try {
      link.cut();
      await eventually(async () => (await fetch(`${spooled.url}/readyz`)).status === 503, 'warren sees the broker gone');
      const nowhere = `console.nowhere.${RUN}`;
      const answer = await call(spooled, 'POST', '/v1/publish',
        { exchange: nowhere, routing_key: 'k', body: 'refused', allow_spool: true });
      assert.equal(answer.status, 202, JSON.stringify(answer.body));
      const id = answer.body.message_id;
      link.restore();
      await eventually(async () => (await ok(spooled, 'GET', '/v1/spool')).dead === 1, 'refused on forwarding');
      const page = await openPage(chrome, `${spooled.url}/console/#spool`);
      const row = page.locator(`li.letter[data-id="${id}"]`);
      await row.waitFor();
      assert.match(await row.locator('.reason').textContent(), /not-found/);
      assert.match(await row.locator('.queue').textContent(), new RegExp(`${nowhere} / k`));
      await row.locator('button[data-act="discard"]').click();
      assert.match(await confirmDialog(page), /Discard/);
      await notice(page, /Discarded 1 spooled message/);
      assert.equal((await ok(spooled, 'GET', '/v1/spool')).dead, 0);
      await page.context().close();
    } finally {
      await spooled.stop();
      link.close();
    }
  });

  test('with auth on, the console asks for a token; a non-admin token gets a clear 403', { timeout: LIMIT }, async () => {
    const admin = 'admin-token-for-console-tests';
    const viewer = 'viewer-token-for-console-tests';
    const secured = await startWarren(`${TOML.split('[[ordered]]')[0]}
[auth]
enabled = true

[[auth.clients]]
name = "ops"
token_sha256 = "${sha256(admin)}"
admin = true

[[auth.clients]]
name = "viewer"
token_sha256 = "${sha256(viewer)}"
consume = ["*"]
`, 'auth');
    try {
      const page = await openPage(chrome, `${secured.url}/console/#queues`);
      await page.locator('#token-dialog[open]').waitFor();
      await page.screenshot({ path: `${SHOTS}token.png` });
      await page.fill('#token-input', viewer);
      await page.click('#token-ok');
      const forbidden = await notice(page, /needs admin/);
      assert.match(forbidden, /Forbidden/);
      await page.screenshot({ path: `${SHOTS}forbidden.png` });

      await page.click('#token-change');
      await page.fill('#token-input', admin);
      await page.press('#token-input', 'Enter');
      await page.locator(`tr[data-queue="${Q.paused}"]`).waitFor();
      assert.equal(await page.locator('#token-state').textContent(), 'token set');
      // Kept for the tab: a reload needs no prompt.
      await page.reload();
      await page.locator(`tr[data-queue="${Q.paused}"]`).waitFor();
      assert.equal(await page.locator('#token-dialog[open]').count(), 0);
      assert.deepEqual(page.errors, []);
      await page.context().close();
    } finally {
      await secured.stop();
    }
  });

  test('1,000 dead letters: first load weight and time to interactive', { timeout: LIMIT }, async () => {
    const figures = await measure(warren, chrome, Q.bulk, dlq(Q.bulk), consoleUrl);
    assert.equal(figures.listed, 1000);
    assert.equal(figures.discarded, 1000);
  });
});
