#!/usr/bin/env node
'use strict';
// An RPC responder: answers each request on a queue with its body in upper case.
// Requests come from Call (rpc_caller.js); Reply sends the answer to the
// request's reply_to with its correlation_id, and acks the request.
//   node rpc_responder.js --queue upper

const { grpc, connect, cli, require_, message, log, fail } = require('./client');

const usage = 'rpc_responder.js [--addr A] --queue Q [--exchange amq.direct] [--name node] ' +
  '[--count N] [--timeout SECONDS]';

async function main() {
  const args = cli(usage, {
    queue: { type: 'string' }, // the request queue, shared by every responder
    exchange: { type: 'string', default: 'amq.direct' }, // bound with the queue's name as key
    name: { type: 'string', default: 'node' }, // sent back in the reply's 'responder' header
    count: { type: 'string', default: '0' }, // exit after answering N requests
    timeout: { type: 'string' }, // exit with an error after this many seconds
  });
  require_(args, usage, 'queue');
  const count = Number(args.count);

  const bus = connect(args.addr);
  const stream = bus.subscribe(
    { queue: args.queue, exchange: args.exchange, binding_keys: [args.queue] },
    args.timeout ? { deadline: Date.now() + Number(args.timeout) * 1000 } : {},
  );
  stream.on('metadata', () => log(`answering requests on ${args.queue}`));

  let answered = 0;
  try {
    for await (const request of stream) {
      const body = request.message.body.toString('utf8');
      const reply = message(body.toUpperCase(), { responder: args.name }, { content_type: 'text/plain' });
      await bus.reply({ delivery_id: request.delivery_id, message: reply });
      log(`answered ${JSON.stringify(body)}`);
      if (++answered === count) break;
    }
  } catch (err) {
    if (err.code === grpc.status.DEADLINE_EXCEEDED) {
      log(`error: timed out after ${args.timeout}s with ${answered} request(s) answered`);
      process.exit(1);
    }
    fail(err);
  }
  if (answered !== count) {
    log('error: the subscription ended');
    process.exit(1);
  }
  stream.on('error', () => {});
  stream.cancel();
  bus.close();
}

main();
