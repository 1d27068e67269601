// The CRDs' x-kubernetes-validations rules, evaluated. The API server of the e2e tests
// (built from Debian's kubernetes source) predates CEL and skips them, so here every rule
// runs under a CEL implementation (@marcbachmann/cel-js) the way the API server runs it:
// at the node of the object it is declared on, after the schema's defaults are applied.
// Every example manifest must pass every rule; for every rule there is an object that
// breaks it (and only it), and a rule added without such a case fails this test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { evaluate } from '@marcbachmann/cel-js';
import { parseAllDocuments } from 'yaml';

const root = new URL('../../../', import.meta.url).pathname;
const crds = {};
for (const f of readdirSync(join(root, 'crds'))) {
  const crd = parseAllDocuments(readFileSync(join(root, 'crds', f), 'utf8'))[0].toJS();
  crds[crd.spec.names.kind] = crd.spec.versions[0].schema.openAPIV3Schema;
}

// The schema's defaults, as the API server applies them before validating.
function withDefaults(schema, v) {
  if (v === undefined && schema.default !== undefined) v = structuredClone(schema.default);
  if (Array.isArray(v) && schema.items) return v.map((x) => withDefaults(schema.items, x));
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const out = { ...v };
    for (const [k, sub] of Object.entries(schema.properties ?? {})) {
      const d = withDefaults(sub, out[k]);
      if (d !== undefined) out[k] = d;
    }
    return out;
  }
  return v;
}

// The messages of the rules an object breaks (each rule at each node it applies to).
function violations(schema, v, path = '', out = []) {
  if (v === undefined || v === null) return out;
  for (const r of schema['x-kubernetes-validations'] ?? []) {
    if (evaluate(r.rule, { self: v }) !== true) out.push(`${path || '.'}: ${r.message}`);
  }
  if (Array.isArray(v) && schema.items) v.forEach((x, i) => violations(schema.items, x, `${path}[${i}]`, out));
  else if (typeof v === 'object') {
    for (const [k, sub] of Object.entries(schema.properties ?? {})) violations(sub, v[k], `${path}.${k}`, out);
  }
  return out;
}

function check(obj) {
  const schema = crds[obj.kind];
  return violations(schema, withDefaults(schema, obj));
}

function rulesOf(schema, out = []) {
  for (const r of schema['x-kubernetes-validations'] ?? []) out.push(r.message);
  for (const sub of Object.values(schema.properties ?? {})) rulesOf(sub, out);
  if (schema.items) rulesOf(schema.items, out);
  return out;
}

const meta = { name: 'x' };
const backend = (spec) => ({ apiVersion: 'llm.knoway.dev/v1alpha1', kind: 'LLMBackend', metadata: meta, spec });
const route = (spec) => ({ apiVersion: 'llm.knoway.dev/v1alpha1', kind: 'LLMRoute', metadata: meta, spec });
const consumer = (spec) => ({ apiVersion: 'llm.knoway.dev/v1alpha1', kind: 'LLMConsumer', metadata: meta, spec });
const vllm = { provider: 'vLLM', upstream: { baseURL: 'http://v:8000/v1' } };
const r1 = { match: { models: ['m'] }, backendRefs: [{ name: 'a' }] };

// Each rule's message -> an object that breaks it (and nothing else).
const BROKEN = {
  'this provider has no public endpoint: set upstream.baseURL, serviceRef or endpoints':
    backend({ provider: 'Ollama' }),
  'credentials.azure is only for provider AzureOpenAI':
    backend({ ...vllm, credentials: { secretRef: { name: 'k' }, azure: { deployment: 'd' } } }),
  'credentials.bedrock is only for provider AWSBedrock':
    backend({ ...vllm, credentials: { secretRef: { name: 'k' }, bedrock: { region: 'eu-west-1' } } }),
  'provider AWSBedrock needs credentials.secretRef and credentials.bedrock':
    backend({ provider: 'AWSBedrock', credentials: { secretRef: { name: 'k' } } }),
  'credentials.vertex is only for provider VertexAI':
    backend({ ...vllm, credentials: { secretRef: { name: 'k' }, vertex: { project: 'p', region: 'r' } } }),
  'provider VertexAI needs credentials.secretRef and credentials.vertex':
    backend({ provider: 'VertexAI', credentials: { vertex: { project: 'p', region: 'r' } } }),
  'set exactly one of baseURL, serviceRef and endpoints':
    backend({ provider: 'vLLM', upstream: { baseURL: 'http://v/v1', serviceRef: { name: 's', port: 8000 } } }),
  'each header name once':
    backend({ ...vllm, upstream: { ...vllm.upstream, headers: [{ name: 'X-A', value: '1' }, { name: 'x-a', value: '2' }] } }),
  'each model once': route({ ...r1, match: { models: ['m', 'n', 'm'] } }),
  'each backend once': route({ ...r1, backendRefs: [{ name: 'a' }, { name: 'b' }, { name: 'a', priority: 1 }] }),
  'every weight is 0: no backend would receive traffic':
    route({ ...r1, backendRefs: [{ name: 'a', weight: 0 }, { name: 'b', weight: 0 }] }),
  'max must not be below base': route({ ...r1, retry: { backoff: { base: '2s', max: '500ms' } } }),
  'set exactly one of requests or tokens':
    [route({ ...r1, rateLimits: [{ name: 'r', requests: { limit: 1, window: '1m' }, tokens: { limit: 1, window: '1m' } }] }),
      consumer({ limits: [{ name: 'r' }] })],
  'enforce: Stream applies to token limits only':
    [route({ ...r1, rateLimits: [{ name: 'r', enforce: 'Stream', requests: { limit: 1, window: '1m' } }] }),
      consumer({ limits: [{ name: 'r', enforce: 'Stream', requests: { limit: 1, window: '1m' } }] })],
};

test('every example manifest passes every rule', () => {
  let n = 0;
  for (const f of readdirSync(join(root, 'examples'))) {
    for (const doc of parseAllDocuments(readFileSync(join(root, 'examples', f), 'utf8'))) {
      const obj = doc.toJS();
      if (!obj || !crds[obj.kind]) continue;
      assert.deepEqual(check(obj), [], `${f}: ${obj.kind} ${obj.metadata.name}`);
      n++;
    }
  }
  assert.ok(n >= 20, `${n} resources in examples/`);
});

test('these valid objects pass, defaults applied (weights default to 1)', () => {
  assert.deepEqual(check(route({ match: { models: ['m', 'n'] }, backendRefs: [{ name: 'a' }, { name: 'b', weight: 0 }],
    retry: { backoff: { base: '100ms', max: '2s' } },
    rateLimits: [{ name: 't', enforce: 'Stream', tokens: { limit: 10, window: '1m' } }] })), []);
  assert.deepEqual(check(backend({ provider: 'OpenAI' })), []); // a public endpoint by default
  assert.deepEqual(check(backend({ ...vllm, upstream: { ...vllm.upstream, headers: [{ name: 'a', value: '1' }, { name: 'b', value: '2' }] } })), []);
});

test('every rule has an object that breaks it, and only it', () => {
  const all = Object.values(crds).flatMap((s) => rulesOf(s));
  for (const message of all) {
    const cases = [BROKEN[message]].flat();
    assert.ok(cases[0], `no invalid object for the rule "${message}": add one to BROKEN`);
    for (const obj of cases) {
      const got = check(obj);
      assert.equal(got.length, 1, `${obj.kind} for "${message}": ${JSON.stringify(got)}`);
      assert.match(got[0], new RegExp(`: ${message.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`));
    }
  }
  assert.equal(all.length, 16);
});
