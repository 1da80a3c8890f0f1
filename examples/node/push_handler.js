#!/usr/bin/env node
'use strict';
// A push handler: a plain HTTP server that Warren POSTs a queue's messages to.
// Node's built-in http module only (no Warren client, no gRPC). Run it beside a
// Warren whose config has a [[push]] entry pointing at it, such as
// config/examples/push.toml (queue "jobs", url http://127.0.0.1:8080/):
//   node push_handler.js --port 8080 &
//   warren --config config/examples/push.toml      # from the repository's root
//   curl -s localhost:5680/v1/publish --json '{"exchange": "amq.direct", "routing_key": "jobs", "body": "hello"}'
// Each POST carries the body as published, its Content-Type, the message's
// properties as CloudEvents headers (ce-id, ce-type, ce-source...) and
// x-warren-attempt. The answer settles the message: 200 acks it. A body "retry"
// is answered 503 with Retry-After: 1 on its first attempt (Warren pushes it
// again a second later, as attempt 2) and 200 after; a body "poison" is
// answered 400 (Warren dead-letters it, to jobs.dlq). Prints one JSON line per POST.

const http = require('node:http');
const { parseArgs } = require('node:util');

const usage = 'push_handler.js [--host 127.0.0.1] [--port 8080] [--count N] [--timeout SECONDS]';
const HEADER_PREFIX = 'x-warren-header-'; // a message's string-valued application headers

/** The status for one push; Warren settles the message by it. */
function answer(body, attempt) {
  if (body === 'poison') return 400; // any 4xx but 429: dead-lettered
  if (body === 'retry' && attempt === 1) return 503; // 429 or 5xx: retried, after Retry-After
  return 200; // 2xx: acked
}

/** The headers whose names start with `prefix`, less the prefix. */
function withPrefix(headers, prefix, keep = false) {
  return Object.fromEntries(Object.entries(headers)
    .filter(([name]) => name.startsWith(prefix))
    .map(([name, value]) => [keep ? name : name.slice(prefix.length), value]));
}

function main() {
  let args;
  try {
    args = parseArgs({
      options: {
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '8080' }, // 0 picks a free port
        count: { type: 'string', default: '0' }, // exit after N messages acked or dead-lettered
        timeout: { type: 'string' }, // exit with an error after this many seconds
        help: { type: 'boolean', short: 'h' },
      },
    }).values;
  } catch (err) {
    console.error(`${err.message}\nusage: ${usage}`);
    process.exit(2);
  }
  if (args.help) {
    console.log(`usage: ${usage}`);
    process.exit(0);
  }
  const count = Number(args.count);
  let settled = 0;
  let timer;

  const server = http.createServer((req, res) => {
    if (req.method !== 'POST') {
      res.writeHead(405, { Allow: 'POST' }).end();
      return;
    }
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const attempt = Number(req.headers['x-warren-attempt'] ?? 1);
      const status = answer(body, attempt);
      const last = status !== 503 && ++settled === count;
      res.writeHead(status, {
        ...(status === 503 && { 'Retry-After': '1' }), // seconds
        ...(last && { Connection: 'close' }),
      });
      res.end();
      console.log(JSON.stringify({
        id: req.headers['ce-id'],
        attempt,
        body,
        content_type: req.headers['content-type'],
        ce: withPrefix(req.headers, 'ce-', true),
        headers: withPrefix(req.headers, HEADER_PREFIX),
        status,
        at: Date.now() / 1000,
      }));
      if (last) {
        clearTimeout(timer);
        server.close(); // (and its idle keep-alive connections)
      }
    });
  });
  server.listen(Number(args.port), args.host, () => {
    const { address, port } = server.address();
    console.error(`listening on http://${address}:${port}/`);
  });
  if (args.timeout) {
    timer = setTimeout(() => {
      console.error(`error: timed out after ${args.timeout}s with ${settled} message(s) settled`);
      process.exit(1);
    }, Number(args.timeout) * 1000);
  }
}

main();
