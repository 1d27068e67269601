// An OTLP/HTTP trace receiver for the tests: POST /v1/traces in either encoding, decoded
// with the OpenTelemetry JS project's own protobuf definitions
// (@opentelemetry/otlp-transformer's generated ExportTraceServiceRequest), spans kept in
// memory in OTLP JSON's shape (hex ids, 64-bit integers as strings) whatever the encoding.
//
//   node otlp_receiver.mjs PORT      prints "listening PORT" when ready
//   GET  /spans                      [{..span, "resource": {...}, "encoding": "json|protobuf"}]
//   POST /fault {"status":503,"delayMs":2000}   answer every export so (status 0: normal)
//   POST /clear
import { createServer } from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const root = require('@opentelemetry/otlp-transformer/build/src/generated/root.js');
const Request = root.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;

const spans = [];
let fault = { status: 0, delayMs: 0 };
let requests = 0;

const hex = (b) => Buffer.from(b ?? []).toString('hex');

// AnyValue (decoded message) -> OTLP JSON's value object
function anyValue(v) {
  if (v.stringValue != null) return { stringValue: v.stringValue };
  if (v.intValue != null) return { intValue: v.intValue.toString() };
  if (v.doubleValue != null) return { doubleValue: v.doubleValue };
  if (v.boolValue != null) return { boolValue: v.boolValue };
  if (v.arrayValue != null) return { arrayValue: { values: (v.arrayValue.values ?? []).map(anyValue) } };
  throw new Error(`unexpected AnyValue ${JSON.stringify(v)}`);
}

const attrs = (list) => (list ?? []).map((kv) => ({ key: kv.key, value: anyValue(kv.value) }));

function fromProtobuf(buf) {
  const req = Request.decode(buf); // throws on malformed input
  const out = [];
  for (const rs of req.resourceSpans) {
    const resource = { attributes: attrs(rs.resource?.attributes) };
    for (const ss of rs.scopeSpans) {
      for (const s of ss.spans) {
        const span = {
          traceId: hex(s.traceId),
          spanId: hex(s.spanId),
          name: s.name,
          kind: s.kind,
          startTimeUnixNano: s.startTimeUnixNano.toString(),
          endTimeUnixNano: s.endTimeUnixNano.toString(),
          attributes: attrs(s.attributes),
          events: (s.events ?? []).map((e) => ({ timeUnixNano: e.timeUnixNano.toString(), name: e.name })),
          scope: ss.scope?.name,
          resource,
        };
        if (s.parentSpanId && s.parentSpanId.length > 0) span.parentSpanId = hex(s.parentSpanId);
        if (s.status && s.status.code) span.status = { code: s.status.code };
        out.push(span);
      }
    }
  }
  return out;
}

function fromJson(text) {
  const req = JSON.parse(text);
  const out = [];
  for (const rs of req.resourceSpans) {
    for (const ss of rs.scopeSpans) {
      for (const s of ss.spans) out.push({ ...s, scope: ss.scope?.name, resource: rs.resource });
    }
  }
  return out;
}

function reply(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'content-type': type });
  res.end(body);
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (req.method === 'GET' && req.url === '/spans') return reply(res, 200, JSON.stringify({ requests, spans }));
    if (req.method === 'POST' && req.url === '/fault') {
      fault = { status: 0, delayMs: 0, ...JSON.parse(body.toString() || '{}') };
      return reply(res, 200, '{}');
    }
    if (req.method === 'POST' && req.url === '/clear') {
      spans.length = 0;
      requests = 0;
      return reply(res, 200, '{}');
    }
    if (req.method !== 'POST' || req.url !== '/v1/traces') return reply(res, 404, '{}');
    requests++;
    const answer = () => {
      if (fault.status) return reply(res, fault.status, '{}');
      const type = (req.headers['content-type'] ?? '').split(';')[0].trim();
      try {
        if (type === 'application/x-protobuf') {
          for (const s of fromProtobuf(body)) spans.push({ ...s, encoding: 'protobuf' });
          // ExportTraceServiceResponse{} in protobuf is empty
          return reply(res, 200, Buffer.alloc(0), 'application/x-protobuf');
        }
        if (type === 'application/json') {
          for (const s of fromJson(body.toString())) spans.push({ ...s, encoding: 'json' });
          return reply(res, 200, '{}');
        }
        return reply(res, 415, '{}');
      } catch (e) {
        process.stderr.write(`bad export: ${e}\n`);
        return reply(res, 400, JSON.stringify({ error: String(e) }));
      }
    };
    if (fault.delayMs) setTimeout(answer, fault.delayMs);
    else answer();
  });
});

server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
