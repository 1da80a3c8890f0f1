#!/usr/bin/env node
'use strict';
// Calls a service over the bus and prints its reply as one line of JSON.
//   node rpc_caller.js --routing-key upper hello

const { connect, cli, require_, parseHeader, message, toJSON, fail } = require('./client');

const usage = 'rpc_caller.js [--addr A] [--exchange amq.direct] --routing-key KEY [-H NAME=VALUE]... ' +
  '[--timeout-ms 5000] BODY';

async function main() {
  const args = cli(usage, {
    exchange: { type: 'string', default: 'amq.direct' },
    'routing-key': { type: 'string' }, // where the responders listen (their queue)
    header: { type: 'string', short: 'H', multiple: true, default: [] },
    'timeout-ms': { type: 'string', default: '5000' }, // how long to wait for the reply
  }, { positionals: true });
  require_(args, usage, 'routing-key');
  if (args.positionals.length !== 1) {
    console.error(`give one BODY\nusage: ${usage}`);
    process.exit(2);
  }
  const timeoutMs = Number(args['timeout-ms']);

  const bus = connect(args.addr);
  const request = {
    exchange: args.exchange,
    routing_key: args['routing-key'],
    message: message(args.positionals[0], Object.fromEntries(args.header.map(parseHeader)),
      { content_type: 'text/plain' }),
    timeout_ms: timeoutMs,
  };
  // The gRPC deadline leaves Warren time to report its own timeout.
  // DEADLINE_EXCEEDED: no reply in time; FAILED_PRECONDITION: no queue bound for the key.
  const reply = await bus.call(request, { deadline: Date.now() + timeoutMs + 5000 }).catch(fail);
  console.log(JSON.stringify(toJSON(reply.message)));
  bus.close();
}

main();
