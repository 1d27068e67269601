// The official openai npm client, unchanged, against knoway-dataplane and the mock provider.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';

const build = process.env.KW_BUILD ?? new URL('../../../build', import.meta.url).pathname;
const procs = [];
let client;

function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function waitPort(port) {
  for (let i = 0; i < 500; i++) {
    const ok = await new Promise((resolve) => {
      const c = connect(port, '127.0.0.1', () => { c.destroy(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`port ${port} did not open`);
}

before(async () => {
  const [mock, listen, admin] = [await freePort(), await freePort(), await freePort()];
  procs.push(spawn(join(build, 'tests/knoway-mockllm'), ['--listen', `127.0.0.1:${mock}`], { stdio: 'ignore' }));
  await waitPort(mock);
  const dir = mkdtempSync(join(tmpdir(), 'kw-openai-'));
  const cfg = join(dir, 'knoway.yaml');
  const backend = (name, headers = '') => `---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: ${name}}
spec:
  provider: vLLM
  upstream:
    baseURL: http://127.0.0.1:${mock}/v1
${headers}`;
  const route = (name, model) => `---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: ${name}}
spec:
  match: {models: [${model}]}
  backendRefs: [{name: ${name}}]
`;
  writeFileSync(cfg, `apiVersion: llm.knoway.dev/v1alpha1
kind: DataPlane
metadata: {name: t}
spec: {listen: "127.0.0.1:${listen}", admin: "127.0.0.1:${admin}", workers: 2}
${backend('demo')}${route('demo', 'demo')}${backend('cut', '    headers: [{name: x-mock-fault, value: reset}, {name: x-mock-fault-after, value: "3"}]\n')}${route('cut', 'cut')}
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {apiKey: k-1}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: claude}
spec:
  provider: Anthropic
  upstream: {baseURL: "http://127.0.0.1:${mock}"}
  credentials: {secretRef: {name: keys}}
${route('claude', 'claude')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: azure}
spec:
  provider: AzureOpenAI
  upstream: {baseURL: "http://127.0.0.1:${mock}"}
  credentials: {secretRef: {name: keys}, azure: {deployment: dep-1}}
${route('azure', 'azure')}`);
  procs.push(spawn(join(build, 'dataplane/knoway-dataplane'), ['-c', cfg], { stdio: 'ignore' }));
  await waitPort(listen);
  client = new OpenAI({ baseURL: `http://127.0.0.1:${listen}/v1`, apiKey: 'not-needed', maxRetries: 0 });
});

after(() => procs.forEach((p) => p.kill('SIGTERM')));

test('chat completion', async () => {
  const r = await client.chat.completions.create({
    model: 'demo', messages: [{ role: 'user', content: 'hello there' }],
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.content, 'tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ');
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.deepEqual([r.usage.prompt_tokens, r.usage.completion_tokens], [5, 8]);
});

test('streaming chat completion', async () => {
  const stream = await client.chat.completions.create({
    model: 'demo', stream: true, messages: [{ role: 'user', content: 'hi' }],
  });
  let text = '';
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    text += chunk.choices[0]?.delta?.content ?? '';
  }
  assert.equal(text, 'tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ');
  assert.equal(chunks, 9); // 8 deltas and the finish chunk: no usage chunk unless asked for
});

test('streaming with include_usage', async () => {
  const stream = await client.chat.completions.create({
    model: 'demo', stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: 'hi' }],
  });
  let usage;
  for await (const chunk of stream) if (chunk.usage) usage = chunk.usage;
  assert.deepEqual([usage.prompt_tokens, usage.completion_tokens, usage.total_tokens], [4, 8, 12]);
});

test('embeddings', async () => {
  const r = await client.embeddings.create({ model: 'demo', input: ['a b', 'c'] });
  assert.equal(r.data.length, 2);
  assert.equal(r.data[1].index, 1);
  assert.equal(r.data[0].embedding.length, 8);
  assert.equal(r.usage.prompt_tokens, 3);
});

test('models', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids.sort(), ['azure', 'claude', 'cut', 'demo']);
});

test('unknown model is a NotFoundError', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-99', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === 'model_not_found'
      && e.param === 'model');
});

test('an upstream failure mid-stream surfaces as an error, not a silent cut', async () => {
  const stream = await client.chat.completions.create({
    model: 'cut', stream: true, messages: [{ role: 'user', content: 'hi' }],
  });
  let text = '';
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  }, (e) => e instanceof OpenAI.APIError && /upstream failed after the response started/.test(e.message));
  assert.equal(text, 'tok0 tok1 tok2 ');
});

for (const model of ['claude', 'azure']) {
  test(`the same client against ${model}, streaming included`, async () => {
    const r = await client.chat.completions.create({
      model, messages: [{ role: 'system', content: 'brief' }, { role: 'user', content: 'hi' }],
    });
    assert.equal(r.choices[0].message.content, 'tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ');
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.equal(r.usage.completion_tokens, 8);
    const stream = await client.chat.completions.create({
      model, stream: true, stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'hi' }],
    });
    let text = '';
    let usage;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, 'tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ');
    assert.equal(usage.completion_tokens, 8);
  });
}
