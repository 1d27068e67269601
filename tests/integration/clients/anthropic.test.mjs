// The official Anthropic npm client, unchanged, against knoway-dataplane's POST /v1/messages:
// every backend (OpenAI-compatible, Anthropic, Azure, Gemini, Bedrock) answers in Anthropic's
// schema, streams and tool use included; the openai client asks the same questions through
// /v1/chat/completions and must get the same answers and token counts.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { start, stop } from './harness.mjs';

let client;
let openai;

before(async () => {
  const base = await start();
  client = new Anthropic({ baseURL: base, apiKey: 'not-needed', maxRetries: 0 });
  openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'not-needed', maxRetries: 0 });
});

after(stop);

const TEXT = 'tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ';

for (const model of ['demo', 'claude', 'azure', 'gemini', 'bedrock', 'vertex-gemini', 'vertex-claude']) {
  test(`a message through ${model}, streaming included, same answer as the OpenAI API`, async () => {
    const m = await client.messages.create({
      model, max_tokens: 64, system: 'brief', messages: [{ role: 'user', content: 'hi' }],
    });
    assert.equal(m.type, 'message');
    assert.equal(m.role, 'assistant');
    assert.equal(m.model, model);
    assert.match(m.id, /^msg_/);
    assert.ok(m._request_id, 'request-id header');
    assert.deepEqual(m.content, [{ type: 'text', text: TEXT }]);
    assert.equal(m.stop_reason, 'end_turn');
    assert.equal(m.stop_sequence, null);
    assert.equal(m.usage.output_tokens, 8);

    const o = await openai.chat.completions.create({
      model, max_tokens: 64,
      messages: [{ role: 'system', content: 'brief' }, { role: 'user', content: 'hi' }],
    });
    assert.equal(o.choices[0].message.content, TEXT);
    const cached = o.usage.prompt_tokens_details?.cached_tokens ?? 0;
    assert.equal(m.usage.input_tokens, o.usage.prompt_tokens - cached);
    assert.equal(m.usage.cache_read_input_tokens, cached);

    const stream = client.messages.stream({
      model, max_tokens: 64, system: 'brief', messages: [{ role: 'user', content: 'hi' }],
    });
    const types = [];
    let text = '';
    stream.on('streamEvent', (e) => types.push(e.type));
    stream.on('text', (t) => { text += t; });
    const fin = await stream.finalMessage();
    assert.equal(text, TEXT);
    assert.deepEqual(fin.content, [{ type: 'text', text: TEXT }]);
    assert.equal(fin.stop_reason, 'end_turn');
    assert.deepEqual([fin.usage.input_tokens, fin.usage.output_tokens],
      [m.usage.input_tokens, m.usage.output_tokens]);
    assert.deepEqual([types[0], types[1], types.at(-3), types.at(-2), types.at(-1)],
      ['message_start', 'content_block_start', 'content_block_stop', 'message_delta', 'message_stop']);
  });
}

// Tool use, the whole round trip: the mocks call the first declared tool with
// {"city": "Paris"} and then answer with the tool's result.
const tools = [{ name: 'get_weather', description: 'Weather in a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } }];

for (const model of ['demo', 'claude', 'gemini', 'bedrock', 'vertex-gemini', 'vertex-claude']) {
  test(`tool use through ${model}, streaming included`, async () => {
    const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
    const m = await client.messages.create({ model, max_tokens: 64, tools, messages });
    assert.equal(m.stop_reason, 'tool_use');
    const use = m.content.find((b) => b.type === 'tool_use');
    assert.equal(use.name, 'get_weather');
    assert.deepEqual(use.input, { city: 'Paris' });
    assert.ok(use.id.length > 0);

    // streamed: the SDK assembles the input from input_json_delta events
    const stream = client.messages.stream({ model, max_tokens: 64, tools, messages });
    let json = '';
    stream.on('inputJson', (delta) => { json += delta; });
    const fin = await stream.finalMessage();
    assert.equal(fin.stop_reason, 'tool_use');
    const suse = fin.content.find((b) => b.type === 'tool_use');
    assert.equal(suse.name, 'get_weather');
    assert.deepEqual(suse.input, { city: 'Paris' });
    assert.deepEqual(JSON.parse(json), { city: 'Paris' });

    // the result goes back as a tool_result block; the model uses it
    const answer = await client.messages.create({
      model, max_tokens: 64, tools,
      messages: [...messages, { role: 'assistant', content: m.content },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: use.id, content: '18C' }] }],
    });
    assert.equal(answer.stop_reason, 'end_turn');
    assert.match(answer.content[0].text, /^tool said: .*18C/);
  });
}

for (const model of ['claude', 'vertex-claude']) {
  test(`extended thinking through ${model} (Anthropic's API): blocks and signatures both ways, streamed too`, async () => {
    const thinking = { type: 'enabled', budget_tokens: 1024 };
    const messages = [{ role: 'user', content: 'hi' }];
    const m = await client.messages.create({ model, max_tokens: 2048, thinking, messages });
    assert.deepEqual(m.content, [
      { type: 'thinking', thinking: 'Thinking it over.', signature: 'EqQBCkYIBxgCKkBmock' },
      { type: 'text', text: TEXT }]);
    // the SDK's own accumulation of thinking_delta and signature_delta
    const stream = client.messages.stream({ model, max_tokens: 2048, thinking, messages });
    const done = await stream.finalMessage();
    assert.deepEqual(done.content, m.content);
    // the next turn sends the thinking block back: it reaches Anthropic (the mock validates)
    const next = await client.messages.create({
      model, max_tokens: 2048, thinking,
      messages: [...messages, { role: 'assistant', content: m.content }, { role: 'user', content: 'again' }],
    });
    assert.equal(next.content[0].type, 'thinking');
    // a budget Anthropic refuses is refused here the same way
    await assert.rejects(client.messages.create({ model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 10 }, messages }),
      (e) => e instanceof Anthropic.BadRequestError && /budget_tokens/.test(e.message));
  });
}

test('content blocks: system blocks, text and a base64 image reach Gemini as it expects', async () => {
  const png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';
  const m = await client.messages.create({
    model: 'gemini', max_tokens: 64, temperature: 0.2, top_p: 0.9, stop_sequences: ['END'],
    system: [{ type: 'text', text: 'You are brief.' }],
    metadata: { user_id: 'u-1' },
    messages: [{ role: 'user', content: [
      { type: 'text', text: 'what is this?' },
      { type: 'image', source: { type: 'base64', media_type: 'image/png', data: png } }] }],
  });
  assert.equal(m.content[0].text, TEXT);
});

test('a request Anthropic would refuse is refused the same way', async () => {
  await assert.rejects(
    client.messages.create({ model: 'demo', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof Anthropic.BadRequestError && e.status === 400
      && e.error.error.type === 'invalid_request_error' && /max_tokens: Field required/.test(e.message));
  await assert.rejects(
    client.messages.create({ model: 'demo', max_tokens: 5, messages: [{ role: 'system', content: 'x' }] }),
    (e) => e instanceof Anthropic.BadRequestError && /messages.0.role/.test(e.message));
  await assert.rejects(
    client.messages.create({ model: 'demo', max_tokens: 5, tools: [{ type: 'web_search_20250305', name: 'web_search' }],
      messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof Anthropic.BadRequestError && /tools.0.type: server tool/.test(e.message));
});

test('a route can serve /v1/messages only (match.paths)', async () => {
  const m = await client.messages.create({ model: 'messages-only', max_tokens: 5,
    messages: [{ role: 'user', content: 'x' }] });
  assert.equal(m.content[0].text, TEXT);
  await assert.rejects(
    openai.chat.completions.create({ model: 'messages-only', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError);
});

test('unknown model is a NotFoundError', async () => {
  await assert.rejects(
    client.messages.create({ model: 'claude-nope', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof Anthropic.NotFoundError && e.error.error.type === 'not_found_error'
      && e.requestID !== undefined);
});

test("a provider's error keeps its status and message", async () => {
  await assert.rejects(
    client.messages.create({ model: 'gemini-badkey', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof Anthropic.BadRequestError && /API key not valid/.test(e.message));
});

for (const [model, re, got] of [
  ['cut', /upstream failed after the response started/, 'tok0 tok1 tok2 '],
  ['bedrock-broken', /The model stream failed/, 'tok0 tok1 '],
]) {
  test(`an upstream failure mid-stream (${model}) is an error event, not a silent cut`, async () => {
    const stream = client.messages.stream({ model, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] });
    let text = '';
    stream.on('text', (t) => { text += t; });
    stream.on('error', () => {}); // finalMessage() rejects with it
    await assert.rejects(stream.finalMessage(), (e) => e instanceof Anthropic.APIError && re.test(e.message));
    assert.equal(text, got);
  });
}
