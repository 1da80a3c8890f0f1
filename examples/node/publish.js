#!/usr/bin/env node
'use strict';
// Publishes messages through Warren; each returns once the broker confirmed it.
//   node publish.js --routing-key jobs hello "second message" -H trace=abc -H n=3

const readline = require('node:readline');
const { connect, cli, require_, parseHeader, message, log, fail } = require('./client');

const usage = 'publish.js [--addr A] [--exchange amq.direct] --routing-key KEY [-H NAME=VALUE]... ' +
  '[--content-type text/plain] [BODY...]  (no BODY: one message per line of stdin)';

async function main() {
  const args = cli(usage, {
    exchange: { type: 'string', default: 'amq.direct' }, // '' is the default exchange
    'routing-key': { type: 'string' },
    header: { type: 'string', short: 'H', multiple: true, default: [] },
    'content-type': { type: 'string', default: 'text/plain' },
  }, { positionals: true });
  require_(args, usage, 'routing-key');
  const headers = Object.fromEntries(args.header.map(parseHeader));
  const bodies = args.positionals.length
    ? args.positionals
    : readline.createInterface({ input: process.stdin, crlfDelay: Infinity });

  const bus = connect(args.addr);
  for await (const body of bodies) {
    const request = {
      exchange: args.exchange,
      routing_key: args['routing-key'],
      message: message(body, headers, { content_type: args['content-type'] }),
    };
    // FAILED_PRECONDITION: no queue is bound for this routing key (yet).
    const confirmed = await bus.publish(request, { deadline: Date.now() + 30_000 }).catch(fail);
    log(`published ${confirmed.message_id}: ${body}`);
  }
  bus.close();
}

main();
