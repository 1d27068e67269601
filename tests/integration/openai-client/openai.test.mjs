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
  const [mock, listen, admin, mock2] = [await freePort(), await freePort(), await freePort(), await freePort()];
  procs.push(spawn(join(build, 'tests/knoway-mockllm'), ['--listen', `127.0.0.1:${mock}`], { stdio: 'ignore' }));
  // Gemini and Bedrock (SigV4 verified by the mock, with a session token)
  procs.push(spawn('python3', [new URL('../../tools/mockproviders.py', import.meta.url).pathname,
    '--listen', `127.0.0.1:${mock2}`, '--aws-region', 'eu-central-1', '--aws-session-token', 'tok-1'],
  { stdio: 'ignore' }));
  await waitPort(mock);
  await waitPort(mock2);
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
stringData:
  apiKey: k-1
  bad: invalid
  AWS_ACCESS_KEY_ID: AKIDEXAMPLE
  AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY
  AWS_SESSION_TOKEN: tok-1
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
${route('azure', 'azure')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: gemini}
spec:
  provider: Gemini
  modelName: gemini-2.5-flash
  upstream: {baseURL: "http://127.0.0.1:${mock2}"}
  credentials: {secretRef: {name: keys}}
${route('gemini', 'gemini')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: gemini-badkey}
spec:
  provider: Gemini
  upstream: {baseURL: "http://127.0.0.1:${mock2}"}
  credentials: {secretRef: {name: keys, key: bad}}
${route('gemini-badkey', 'gemini-badkey')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: bedrock}
spec:
  provider: AWSBedrock
  modelName: "anthropic.claude-3-5-haiku-20241022-v1:0"
  upstream: {baseURL: "http://127.0.0.1:${mock2}"}
  credentials: {secretRef: {name: keys}, bedrock: {region: eu-central-1, sessionTokenKey: AWS_SESSION_TOKEN}}
${route('bedrock', 'bedrock')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: bedrock-broken}
spec:
  provider: AWSBedrock
  upstream:
    baseURL: "http://127.0.0.1:${mock2}"
    headers: [{name: x-mock-fault, value: exception}, {name: x-mock-fault-after, value: "2"}]
  credentials: {secretRef: {name: keys}, bedrock: {region: eu-central-1, sessionTokenKey: AWS_SESSION_TOKEN}}
${route('bedrock-broken', 'bedrock-broken')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: bedrock-crc}
spec:
  provider: AWSBedrock
  upstream:
    baseURL: "http://127.0.0.1:${mock2}"
    headers: [{name: x-mock-fault, value: badcrc}, {name: x-mock-fault-after, value: "2"}]
  credentials: {secretRef: {name: keys}, bedrock: {region: eu-central-1, sessionTokenKey: AWS_SESSION_TOKEN}}
${route('bedrock-crc', 'bedrock-crc')}`);
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
  assert.deepEqual(ids.sort(), ['azure', 'bedrock', 'bedrock-broken', 'bedrock-crc', 'claude', 'cut',
    'demo', 'gemini', 'gemini-badkey']);
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

for (const model of ['claude', 'azure', 'gemini', 'bedrock']) {
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

// Tool calls, the whole round trip, through every translating provider: the model calls the
// first declared tool with {"city": "Paris"}, then answers with the tool's result.
const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather in a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];

for (const model of ['claude', 'gemini', 'bedrock']) {
  test(`tool calls through ${model}, streaming included`, async () => {
    const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
    const r = await client.chat.completions.create({ model, messages, tools });
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    const call = r.choices[0].message.tool_calls[0];
    assert.equal(call.type, 'function');
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris' });
    assert.ok(call.id.length > 0);

    // the same call, streamed: arguments assembled from the deltas
    const stream = await client.chat.completions.create({ model, messages, tools, stream: true });
    const calls = [];
    let finish;
    for await (const chunk of stream) {
      for (const d of chunk.choices[0]?.delta?.tool_calls ?? []) {
        calls[d.index] ??= { id: '', name: '', args: '' };
        calls[d.index].id += d.id ?? '';
        calls[d.index].name += d.function?.name ?? '';
        calls[d.index].args += d.function?.arguments ?? '';
      }
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(finish, 'tool_calls');
    assert.equal(calls.length, 1);
    assert.equal(calls[0].name, 'get_weather');
    assert.deepEqual(JSON.parse(calls[0].args), { city: 'Paris' });

    // the tool's result goes back; the model uses it
    const answer = await client.chat.completions.create({
      model, tools,
      messages: [...messages, r.choices[0].message,
        { role: 'tool', tool_call_id: call.id, content: '{"temp":"18C"}' }],
    });
    assert.equal(answer.choices[0].finish_reason, 'stop');
    assert.match(answer.choices[0].message.content, /^tool said: .*18C/);
  });
}

test('Gemini embeddings through the SDK (which asks for base64)', async () => {
  const r = await client.embeddings.create({ model: 'gemini', input: ['alpha', 'beta'] });
  assert.equal(r.data.length, 2);
  assert.equal(r.data[0].embedding.length, 8);
  const one = await client.embeddings.create({ model: 'gemini', input: 'alpha', encoding_format: 'float' });
  assert.deepEqual(one.data[0].embedding.map((x) => x.toFixed(5)), r.data[0].embedding.map((x) => x.toFixed(5)));
});

test('a provider error keeps its status and message', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'gemini-badkey', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.code === 'INVALID_ARGUMENT'
      && /API key not valid/.test(e.message));
});

test('a Bedrock exception frame mid-stream surfaces as an error', async () => {
  const stream = await client.chat.completions.create({
    model: 'bedrock-broken', stream: true, messages: [{ role: 'user', content: 'hi' }],
  });
  let text = '';
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  }, (e) => e instanceof OpenAI.APIError && /The model stream failed/.test(e.message));
  assert.equal(text, 'tok0 tok1 ');
});

test('a Bedrock frame with a bad CRC ends the stream with an error', async () => {
  const stream = await client.chat.completions.create({
    model: 'bedrock-crc', stream: true, messages: [{ role: 'user', content: 'hi' }],
  });
  let text = '';
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  }, (e) => e instanceof OpenAI.APIError && /event stream: message CRC mismatch/.test(e.message));
  assert.equal(text, 'tok0 tok1 ');
});
