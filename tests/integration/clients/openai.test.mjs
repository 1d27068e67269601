// The official openai npm client, unchanged, against knoway-dataplane and the mock provider.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { start, stop } from './harness.mjs';

let client;

before(async () => {
  client = new OpenAI({ baseURL: `${await start()}/v1`, apiKey: 'not-needed', maxRetries: 0 });
});

after(stop);

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
  assert.deepEqual(ids.sort(), ['azure', 'azure-native', 'bedrock', 'bedrock-broken',
    'bedrock-crc', 'bedrock-native', 'bedrock-throttled', 'claude', 'claude-native', 'continued', 'cut', 'demo', 'gemini',
    'gemini-badkey', 'messages-only', 'openai-native', 'vertex-claude', 'vertex-gemini']);
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

test('a stream continued by another backend after a cut is one stream to the SDK', async () => {
  const stream = client.chat.completions.stream({
    model: 'continued', stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: 'hi' }],
  });
  let text = '';
  stream.on('content', (delta) => { text += delta; });
  const done = await stream.finalChatCompletion(); // the SDK's own accumulation
  assert.equal(text, 'tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ');
  assert.equal(done.choices[0].message.content, text);
  assert.equal(done.choices[0].finish_reason, 'stop');
  assert.equal(done.usage.completion_tokens, 8); // 3 before the cut, 5 after
});

for (const model of ['claude', 'azure', 'gemini', 'bedrock', 'vertex-gemini', 'vertex-claude']) {
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

for (const model of ['claude', 'gemini', 'bedrock', 'vertex-gemini', 'vertex-claude']) {
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

test('what clients send after tool calls reaches Bedrock: empty assistant content, refusals', async () => {
  const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
  const r = await client.chat.completions.create({ model: 'bedrock', messages, tools });
  const call = r.choices[0].message.tool_calls[0];
  // the assistant turn as many clients echo it: content "" beside the tool calls
  const answer = await client.chat.completions.create({
    model: 'bedrock', tools,
    messages: [...messages, { role: 'assistant', content: '', tool_calls: r.choices[0].message.tool_calls },
      { role: 'tool', tool_call_id: call.id, content: '{"temp":"18C"}' }],
  });
  assert.match(answer.choices[0].message.content, /^tool said: .*18C/);
  // an empty assistant message is dropped, a refusal part becomes text (Converse would
  // refuse a blank block and non-alternating roles)
  const again = await client.chat.completions.create({
    model: 'bedrock', messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: '' },
      { role: 'assistant', content: [{ type: 'refusal', refusal: 'I cannot help with that.' }] },
      { role: 'user', content: 'hi again' }],
  });
  assert.equal(again.choices[0].finish_reason, 'stop');
});

test('reasoning through Anthropic: reasoning_content and thinking_blocks, streamed too', async () => {
  const messages = [{ role: 'user', content: 'hi' }];
  const r = await client.chat.completions.create({ model: 'claude', reasoning_effort: 'low', messages });
  const m = r.choices[0].message;
  assert.equal(m.reasoning_content, 'Thinking it over.');
  assert.deepEqual(m.thinking_blocks, [{ type: 'thinking', thinking: 'Thinking it over.', signature: 'EqQBCkYIBxgCKkBmock' }]);
  assert.equal(m.content, 'tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ');
  const stream = await client.chat.completions.create({ model: 'claude', reasoning_effort: 'low', stream: true, messages });
  let reasoning = '';
  let text = '';
  let signature;
  for await (const chunk of stream) {
    const d = chunk.choices[0]?.delta ?? {};
    reasoning += d.reasoning_content ?? '';
    text += d.content ?? '';
    for (const b of d.thinking_blocks ?? []) signature = b.signature;
  }
  assert.equal(reasoning, 'Thinking it over.');
  assert.equal(signature, 'EqQBCkYIBxgCKkBmock');
  assert.equal(text, m.content);
  // without reasoning_effort no thinking is asked for
  const plain = await client.chat.completions.create({ model: 'claude', messages });
  assert.equal(plain.choices[0].message.reasoning_content, undefined);
});

test('Bedrock service tiers both ways', async () => {
  const messages = [{ role: 'user', content: 'hi' }];
  const r = await client.chat.completions.create({ model: 'bedrock', service_tier: 'flex', messages });
  assert.equal(r.service_tier, 'flex');
  const stream = await client.chat.completions.create({
    model: 'bedrock', service_tier: 'priority', stream: true, stream_options: { include_usage: true }, messages,
  });
  let last;
  for await (const chunk of stream) last = chunk;
  assert.equal(last.service_tier, 'priority');
  assert.equal(last.usage.completion_tokens, 8);
  await assert.rejects(client.chat.completions.create({ model: 'bedrock', service_tier: 'scale', messages }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'service_tier');
});

test('a Bedrock error keeps OpenAI\'s type and names the AWS type in code', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'bedrock-throttled', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.RateLimitError && e.code === 'ThrottlingException'
      && e.type === 'rate_limit_exceeded' && /mock error/.test(e.message));
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
