// Measures the console with 1,000 dead letters listed: bytes over the wire
// on the first load (CDP's encodedDataLength, assets and API apart), on a
// reload (ETag revalidation), time to interactive (navigation start to the
// list laid out with the main thread free again), then selects all and
// discards them through the page. Prints the figures.

import assert from 'node:assert/strict';
import { confirmDialog, depth, notice, ok, openPage } from './warren.mjs';

const N = 1000;

async function fill(warren, queue) {
  for (let start = 0; start < N; start += 250) {
    const batch = Array.from({ length: 250 }, (_, i) => ({
      exchange: '', routing_key: queue,
      body: { order: start + i, items: [{ sku: 'A-100', qty: 2 }, { sku: 'B-7', qty: 1 }], note: 'bulk dead letter' },
    }));
    const answer = await ok(warren, 'POST', '/v1/publish/batch', batch);
    assert.ok(answer.results.every((r) => r.code === 0), JSON.stringify(answer.results.find((r) => r.code)));
  }
}

// Bytes received per request while `fn` runs, through CDP.
async function wire(page, fn) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  const urls = new Map();
  const sizes = [];
  cdp.on('Network.requestWillBeSent', (e) => urls.set(e.requestId, e.request.url));
  cdp.on('Network.loadingFinished', (e) => sizes.push({ url: urls.get(e.requestId), bytes: e.encodedDataLength }));
  await fn();
  await cdp.detach();
  const api = sizes.filter((s) => new URL(s.url).pathname.startsWith('/v1/'));
  const assets = sizes.filter((s) => new URL(s.url).pathname.startsWith('/console'));
  const sum = (list) => list.reduce((n, s) => n + s.bytes, 0);
  return { assets: sum(assets), assetRequests: assets.length, api: sum(api), total: sum(sizes) };
}

export async function measure(warren, chrome, queue, dlq, consoleUrl) {
  await fill(warren, queue);
  await depth(warren, dlq, N);
  const page = await openPage(chrome);
  const hash = `#dead-letters/${encodeURIComponent(dlq)}?limit=${N}`;
  const mark = `console:dead-letters:${dlq}:${N}`;
  const listed = async () => {
    await page.waitForFunction((m) => performance.getEntriesByName(m).length > 0, mark, { timeout: 60000 });
    return page.evaluate((m) => {
      const nav = performance.getEntriesByType('navigation')[0];
      const list = performance.getEntriesByType('resource').find((r) => r.name.includes('/v1/dead-letters/'));
      return {
        interactive: performance.getEntriesByName(m)[0].startTime,
        domContentLoaded: nav.domContentLoadedEventEnd,
        listRequest: list ? list.responseEnd - list.requestStart : null,
        render: list ? performance.getEntriesByName(m)[0].startTime - list.responseEnd : null,
        rows: document.querySelectorAll('#dl-list li.letter[data-id]').length,
      };
    }, mark);
  };
  let timing;
  const first = await wire(page, async () => {
    await page.goto(consoleUrl(hash));
    timing = await listed();
  });
  assert.equal(timing.rows, N);

  // Usable at that size: select all, open one, then discard them all.
  const selectAll = await page.evaluate(async () => {
    const t0 = performance.now();
    document.getElementById('dl-all').click();
    await new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
    return performance.now() - t0;
  });
  assert.match(await page.locator('#dl-count').textContent(), /1000 dead letters listed, 1000 selected/);
  await page.locator('#dl-list li.letter').nth(500).locator('summary').click();
  await page.locator('#dl-list li.letter').nth(500).locator('pre.body').waitFor();

  // A reload revalidates the assets (304s) and lists again.
  await page.evaluate(() => performance.clearMarks());
  const again = await wire(page, async () => {
    await page.reload();
    await listed();
  });

  const t0 = Date.now();
  await page.click('#dl-all');
  await page.click('#dl-discard-selected');
  assert.match(await confirmDialog(page), /Discard 1000 dead letters/);
  const done = await notice(page, /Discarded 1000 messages/);
  const discardMs = Date.now() - t0;
  await depth(warren, dlq, 0);
  await page.context().close();

  const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
  const figures = {
    listed: timing.rows,
    discarded: Number(/Discarded (\d+)/.exec(done)[1]),
    first_load_asset_bytes: first.assets,
    first_load_asset_requests: first.assetRequests,
    first_load_api_bytes: first.api,
    first_load_total_bytes: first.total,
    reload_total_bytes: again.total,
    dom_content_loaded_ms: Math.round(timing.domContentLoaded),
    list_request_ms: Math.round(timing.listRequest),
    render_ms: Math.round(timing.render),
    time_to_interactive_ms: Math.round(timing.interactive),
    select_all_ms: Math.round(selectAll),
    discard_all_ms: discardMs,
  };
  console.log([
    '',
    `console figures (${N} dead letters listed):`,
    `  first load: ${kib(first.assets)} of console assets in ${first.assetRequests} requests, ` +
      `${kib(first.api)} of API JSON, ${kib(first.total)} in all (bytes over the wire)`,
    `  reload (ETag, 304s): ${kib(again.total)} in all`,
    `  DOMContentLoaded ${figures.dom_content_loaded_ms} ms; dead-letter listing request ${figures.list_request_ms} ms;` +
      ` rendering the 1,000 rows ${figures.render_ms} ms;\n  time to interactive (navigation start to the 1,000 rows laid out, main thread free) ${figures.time_to_interactive_ms} ms`,
    `  select all ${figures.select_all_ms} ms; discard all 1,000 (confirmed) ${figures.discard_all_ms} ms`,
    `CONSOLE_FIGURES ${JSON.stringify(figures)}`,
    '',
  ].join('\n'));
  return figures;
}
