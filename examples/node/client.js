'use strict';
// What the four Node.js examples share: Warren's proto loaded at run time, a
// promise-based client, command-line flags, and headers to and from
// google.protobuf.Value.

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = process.env.WARREN_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync('warren/v1/bus.proto', {
  includeDirs: [PROTO_DIR],
  keepCase: true, // the proto's snake_case field names, as in every other client
  longs: Number,
  defaults: true,
  oneofs: true, // google.protobuf.Value says which `kind` it holds
});
const { Bus } = grpc.loadPackageDefinition(definition).warren.v1;

/** A client whose unary methods return promises. */
function connect(addr) {
  const client = new Bus(addr, grpc.credentials.createInsecure());
  const unary = (method) => (request, options = {}) =>
    new Promise((resolve, reject) =>
      client[method](request, options, (err, response) => (err ? reject(err) : resolve(response))));
  return {
    publish: unary('Publish'),
    ack: unary('Ack'),
    nack: unary('Nack'),
    call: unary('Call'),
    reply: unary('Reply'),
    subscribe: (request, options = {}) => client.Subscribe(request, options),
    // Bidirectional: write requests (the subscription first), read deliveries.
    streamingSubscribe: (options = {}) => client.StreamingSubscribe(options),
    close: () => client.close(),
  };
}

/** Parses flags (with --addr and --help); exits with usage on a mistake. */
function cli(usage, options, { positionals = false } = {}) {
  const all = {
    addr: { type: 'string', default: process.env.WARREN_GRPC_ADDR || '127.0.0.1:5681' },
    help: { type: 'boolean', short: 'h' },
    ...options,
  };
  let parsed;
  try {
    parsed = parseArgs({ options: all, allowPositionals: positionals });
  } catch (err) {
    console.error(`${err.message}\nusage: ${usage}`);
    process.exit(2);
  }
  if (parsed.values.help) {
    console.log(`usage: ${usage}\n  --addr HOST:PORT  Warren's gRPC address (default: $WARREN_GRPC_ADDR or 127.0.0.1:5681)`);
    process.exit(0);
  }
  return { ...parsed.values, positionals: parsed.positionals };
}

/** Exits with usage when a required flag is missing. */
function require_(args, usage, ...names) {
  for (const name of names) {
    if (args[name] === undefined) {
      console.error(`--${name} is required\nusage: ${usage}`);
      process.exit(2);
    }
  }
}

// protobufjs ships google/protobuf/struct.proto with camelCase field names,
// whatever keepCase says: Value is {stringValue}, {structValue: {fields}}...

/** A JSON value as a google.protobuf.Value. */
function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: { fields: mapValues(v, toValue) } };
}

/** A google.protobuf.Value as a JSON value. */
function fromValue(v) {
  switch (v.kind) {
    case 'structValue': return mapValues(v.structValue.fields || {}, fromValue);
    case 'listValue': return (v.listValue.values || []).map(fromValue);
    case 'nullValue': case undefined: return null;
    default: return v[v.kind];
  }
}

const mapValues = (object, f) => Object.fromEntries(Object.entries(object).map(([k, v]) => [k, f(v)]));

/** NAME=VALUE; VALUE is JSON when it parses (3, true, {"a":1}), else a string. */
function parseHeader(text) {
  const eq = text.indexOf('=');
  if (eq < 1) throw new Error(`expected NAME=VALUE, got ${JSON.stringify(text)}`);
  const raw = text.slice(eq + 1);
  try {
    return [text.slice(0, eq), JSON.parse(raw)];
  } catch {
    return [text.slice(0, eq), raw];
  }
}

/** A Message with a UTF-8 body and JSON headers. */
function message(body, headers = {}, properties = {}) {
  return { body: Buffer.from(body, 'utf8'), headers: mapValues(headers, toValue), ...properties };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The message's body (text, or body_base64), headers and set properties. */
function toJSON(m) {
  let out;
  try {
    out = { body: utf8.decode(m.body) };
  } catch {
    out = { body_base64: m.body.toString('base64') };
  }
  out.headers = mapValues(m.headers || {}, fromValue);
  for (const field of ['content_type', 'message_id', 'correlation_id', 'type', 'app_id']) {
    if (m[field]) out[field] = m[field];
  }
  return out;
}

const log = (...parts) => console.error(...parts);

/** Ends the process on a gRPC error, naming its status code. */
function fail(err) {
  console.error(`error: ${grpc.status[err.code] ?? err.code}: ${err.details ?? err.message}`);
  process.exit(1);
}

module.exports = { grpc, connect, cli, require_, parseHeader, message, toJSON, log, fail };
