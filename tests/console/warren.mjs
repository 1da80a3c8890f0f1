// Test helpers: a real Warren (the built binary, its own config in a temp
// dir, free ports) against the local RabbitMQ, its HTTP API, SSE
// subscriptions, and headless Chromium.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import amqp from 'amqplib';
import { chromium } from 'playwright-core';

export const AMQP_URL = process.env.WARREN_TEST_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
const BIN = process.env.WARREN_BIN || new URL('../../target/debug/warren', import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// A prefix no other run uses (queues of this run start with it).
export const RUN = process.env.CONSOLE_RUN_ID || `consoletest.${randomBytes(4).toString('hex')}`;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export function sha256(text) {
  return createHash('sha256').update(text).digest('hex');
}

// Polls `check` (async, truthy when done) until `ms` passed.
export async function eventually(check, what, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await check();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}`);
}

// Starts Warren with `toml` (its listen addresses added) and waits for
// /readyz. `stop()` sends SIGTERM and waits for the exit.
export async function startWarren(toml, name = 'warren', amqpUrl = AMQP_URL) {
  const dir = mkdtempSync(join(tmpdir(), `warren-console-${name}-`));
  const [http, grpc] = [await freePort(), await freePort()];
  const config = join(dir, 'warren.toml');
  writeFileSync(config, `[amqp]\nurl = "${amqpUrl}"\n[http]\nlisten = "127.0.0.1:${http}"\n` +
    `[grpc]\nlisten = "127.0.0.1:${grpc}"\n[shutdown]\ngrace = "5s"\n${toml}\n`);
  const log = join(dir, 'warren.log');
  const out = openSync(log, 'w');
  const proc = spawn(BIN, ['--config', config], { stdio: ['ignore', out, out] });
  const url = `http://127.0.0.1:${http}`;
  let exited = null;
  const exit = new Promise((resolve) => proc.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited); }));
  try {
    await eventually(async () => {
      if (exited) throw new Error(`warren exited (${JSON.stringify(exited)}):\n${readFileSync(log, 'utf8')}`);
      try { return (await fetch(`${url}/readyz`)).ok; } catch { return false; }
    }, 'warren ready', 30000);
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  return {
    url, dir, log,
    async stop() {
      if (!exited) proc.kill('SIGTERM');
      const done = await Promise.race([exit, sleep(10000).then(() => null)]);
      if (!done) { proc.kill('SIGKILL'); await exit; }
    },
  };
}

// A TCP relay to the broker that a test cuts (every connection closed, new
// ones refused) and restores: the broker goes away for one Warren only.
export async function relay() {
  const target = new URL(AMQP_URL.replace(/^amqp:/, 'http:'));
  const sockets = new Set();
  let up = true;
  const server = createServer((client) => {
    if (!up) { client.destroy(); return; }
    const broker = connect(Number(target.port || 5672), '127.0.0.1');
    for (const s of [client, broker]) { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => {}); }
    client.pipe(broker);
    broker.pipe(client);
    client.on('close', () => broker.destroy());
    broker.on('close', () => client.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `amqp://guest:guest@127.0.0.1:${port}/%2f`,
    cut() { up = false; for (const s of sockets) s.destroy(); },
    restore() { up = true; },
    close() { up = false; for (const s of sockets) s.destroy(); server.close(); },
  };
}

// An HTTP call to Warren's API: {status, body}.
export async function call(warren, method, path, body, token) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`${warren.url}${path}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = text; }
  return { status: response.status, body: json };
}

// Like call(), but anything but 2xx throws.
export async function ok(warren, method, path, body, token) {
  const answer = await call(warren, method, path, body, token);
  if (answer.status < 200 || answer.status > 299) {
    throw new Error(`${method} ${path}: ${answer.status} ${JSON.stringify(answer.body)}`);
  }
  return answer.body;
}

export async function publish(warren, queue, body, fields = {}) {
  return ok(warren, 'POST', '/v1/publish', { exchange: '', routing_key: queue, body, ...fields });
}

// An SSE subscription: `next()` resolves with the next delivery (JSON).
export function subscribe(warren, queue, prefetch = 10) {
  const controller = new AbortController();
  const waiting = [];
  const ready = [];
  const push = (delivery) => {
    const w = waiting.shift();
    if (w) w.resolve(delivery); else ready.push(delivery);
  };
  const done = (async () => {
    const response = await fetch(`${warren.url}/v1/subscribe/${encodeURIComponent(queue)}?prefetch=${prefetch}`, {
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(`subscribe ${queue}: ${response.status} ${await response.text()}`);
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of response.body) {
      buffer += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        const type = event.split('\n').find((l) => l.startsWith('event:'));
        if (data && !type) push(JSON.parse(data));
      }
    }
  })().catch((e) => {
    if (e.name !== 'AbortError') for (const w of waiting.splice(0)) w.reject(e);
  });
  return {
    next(ms = 10000) {
      if (ready.length) return Promise.resolve(ready.shift());
      return new Promise((resolve, reject) => {
        const w = { resolve, reject };
        waiting.push(w);
        setTimeout(() => {
          const i = waiting.indexOf(w);
          if (i >= 0) { waiting.splice(i, 1); reject(new Error(`no delivery from ${queue} within ${ms} ms`)); }
        }, ms);
      });
    },
    ack: (d) => ok(warren, 'POST', '/v1/ack', { delivery_ids: [d.delivery_id] }),
    nack: (d, requeue = false) => ok(warren, 'POST', '/v1/nack', { delivery_ids: [d.delivery_id], requeue }),
    async close() { controller.abort(); await done; },
  };
}

// Waits until Warren says `queue` holds `n` messages.
export async function depth(warren, queue, n) {
  return eventually(async () => {
    const q = await ok(warren, 'GET', `/v1/queues/${encodeURIComponent(queue)}`);
    return q.messages === n ? q : null;
  }, `${queue} to hold ${n} messages`);
}

export async function browser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
  });
}

// A page that fails the test on any script error or CSP violation.
export async function openPage(b, url) {
  const context = await b.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[0-9]/.test(m.text())) page.errors.push(`console: ${m.text()}`);
  });
  if (url) await page.goto(url);
  return page;
}

// Answers the in-page confirmation dialog; resolves with its text.
export async function confirmDialog(page, answer = 'ok') {
  const dialog = page.locator('#confirm-dialog[open]');
  await dialog.waitFor();
  const text = await page.locator('#confirm-text').textContent();
  await page.click(answer === 'ok' ? '#confirm-ok' : '#confirm-cancel');
  await page.locator('#confirm-dialog[open]').waitFor({ state: 'detached' });
  return text;
}

export async function notice(page, pattern) {
  const box = page.locator('#notice');
  await box.waitFor({ state: 'visible' });
  await page.waitForFunction((p) => new RegExp(p).test(document.getElementById('notice').textContent), pattern.source);
  return box.textContent();
}

// Where screenshots go: docs/console/ with `run.sh --screenshots`, else a
// temp dir (a test run leaves the committed pictures alone).
export const SHOTS = `${process.env.CONSOLE_SHOTS || mkdtempSync(join(tmpdir(), 'warren-console-shots-'))}/`;

// Deletes what a run declared on the broker: `queues` with their
// dead-letter queues, and ordered `groups` (exchange, partitions, slots).
export async function cleanup(queues, groups, { partitions = 1, slots = 32 } = {}) {
  const names = queues.flatMap((q) => [q, `${q}.dlq`, `warren.paused.${q}`]);
  for (const g of groups) {
    names.push(`${g}.dlq`, `${g}.subscribers`, `warren.paused.${g}`);
    for (let p = 0; p < partitions; p += 1) {
      names.push(`${g}.${p}`, `${g}.${p}.handover`);
      for (let s = 0; s < slots; s += 1) names.push(`${g}.${p}.held.${s}`, `${g}.${p}.wait.${s}`);
    }
  }
  const connection = await amqp.connect(AMQP_URL);
  try {
    let channel = await connection.createChannel();
    for (const name of names) {
      try {
        await channel.deleteQueue(name);
      } catch {
        channel = await connection.createChannel();
      }
    }
    for (const g of groups) await channel.deleteExchange(g).catch(() => {});
  } finally {
    await connection.close();
  }
}
