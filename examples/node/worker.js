#!/usr/bin/env node
'use strict';
// A worker: consumes a queue through Warren and settles every delivery.
// Acks good messages; a body "retry" is nacked with requeue on its first attempt
// (Warren redelivers it) and acked on the next; a body "poison" is nacked
// without requeue (dead-lettered). Prints one JSON line per delivery. With
// --streaming it uses StreamingSubscribe: acks and nacks go in the same stream.
//   node worker.js --queue jobs [--streaming]

const { grpc, connect, cli, require_, toJSON, log, fail } = require('./client');

const usage = 'worker.js [--addr A] --queue Q [--exchange amq.direct] [--binding-key K]... ' +
  '[--prefetch 10] [--retry-delay-ms 500] [--count N] [--timeout SECONDS] [--streaming]';

async function main() {
  const args = cli(usage, {
    queue: { type: 'string' }, // a durable queue, shared by every worker
    exchange: { type: 'string', default: 'amq.direct' }, // '' consumes an existing queue as is
    'binding-key': { type: 'string', multiple: true }, // default: the queue's name
    prefetch: { type: 'string', default: '10' },
    'retry-delay-ms': { type: 'string', default: '500' },
    count: { type: 'string', default: '0' }, // exit after N messages acked or dead-lettered
    timeout: { type: 'string' }, // exit with an error after this many seconds
    streaming: { type: 'boolean', default: false }, // StreamingSubscribe: settle in the stream
  });
  require_(args, usage, 'queue');
  const count = Number(args.count);

  const bus = connect(args.addr);
  const subscription = {
    queue: args.queue,
    exchange: args.exchange,
    binding_keys: args.exchange ? (args['binding-key'] ?? [args.queue]) : [],
    prefetch: Number(args.prefetch),
  };
  const options = args.timeout ? { deadline: Date.now() + Number(args.timeout) * 1000 } : {};
  let stream, ack, nack;
  if (args.streaming) {
    stream = bus.streamingSubscribe(options);
    stream.write({ subscription });
    ack = async (ids) => stream.write({ ack_ids: ids });
    nack = async (ids, requeue, delay_ms = 0) => stream.write({ nack_ids: ids, requeue, delay_ms });
  } else {
    stream = bus.subscribe(subscription, options);
    ack = (ids) => bus.ack({ delivery_ids: ids });
    nack = (ids, requeue, delay_ms = 0) => bus.nack({ delivery_ids: ids, requeue, delay_ms });
  }
  // Warren sends the headers once the queue is declared, bound and consumed.
  stream.on('metadata', () => log(`subscribed to ${args.queue}`));

  let done = 0;
  try {
    for await (const delivery of stream) {
      const body = delivery.message.body.toString('utf8');
      const ids = [delivery.delivery_id];
      let action;
      if (body === 'poison') {
        await nack(ids, false);
        action = 'dead-lettered';
      } else if (body === 'retry' && delivery.attempt === 1) {
        await nack(ids, true, Number(args['retry-delay-ms']));
        action = 'requeued';
      } else {
        await ack(ids);
        action = 'acked';
      }
      console.log(JSON.stringify({
        ...toJSON(delivery.message), routing_key: delivery.routing_key, attempt: delivery.attempt, action,
      }));
      if (action !== 'requeued' && ++done === count) break;
    }
  } catch (err) {
    if (err.code === grpc.status.DEADLINE_EXCEEDED) {
      log(`error: timed out after ${args.timeout}s with ${done} message(s) settled`);
      process.exit(1);
    }
    fail(err);
  }
  if (done !== count) {
    log('error: the subscription ended');
    process.exit(1);
  }
  stream.on('error', () => {}); // the CANCELLED that cancel() brings
  if (args.streaming) {
    // In-stream settlements are not answered: give the last ones a moment
    // to reach Warren before the stream goes.
    stream.end();
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  stream.cancel(); // unsettled deliveries go back to the queue
  bus.close();
}

main();
