// The official openai npm client's Responses API (responses.create, responses.stream) against
// knoway-dataplane's POST /v1/responses, translated through the chat path to every backend
// (OpenAI-compatible, Anthropic, Gemini, Bedrock), tool calls and reasoning included.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { start, stop } from './harness.mjs';

let client;

before(async () => {
  const base = await start();
  client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'not-needed', maxRetries: 0 });
});

after(stop);

const TEXT = 'tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ';
const tools = [{ type: 'function', name: 'get_weather', description: 'Weather in a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }, strict: false }];

for (const model of ['demo', 'claude', 'gemini', 'bedrock', 'vertex-gemini', 'vertex-claude']) {
  test(`responses.create and responses.stream through ${model}`, async () => {
    const r = await client.responses.create({ model, instructions: 'brief', input: 'hi', max_output_tokens: 64 });
    assert.equal(r.object, 'response');
    assert.match(r.id, /^resp_/);
    assert.equal(r.status, 'completed');
    assert.equal(r.model, model);
    assert.equal(r.output_text, TEXT); // the SDK's own view of the output
    assert.equal(r.output[0].type, 'message');
    assert.equal(r.usage.output_tokens, 8);
    assert.equal(r.usage.total_tokens, r.usage.input_tokens + 8);
    assert.equal(r.instructions, 'brief');
    assert.equal(r.max_output_tokens, 64);

    const stream = client.responses.stream({ model, input: [{ role: 'user', content: 'hi' }] });
    let deltas = '';
    stream.on('response.output_text.delta', (e) => { deltas += e.delta; });
    const done = await stream.finalResponse(); // the SDK's accumulation, checked as it goes
    assert.equal(deltas, TEXT);
    assert.equal(done.output_text, TEXT);
    assert.equal(done.status, 'completed');
    assert.equal(done.usage.output_tokens, 8);
  });
}

for (const model of ['demo', 'claude', 'gemini', 'bedrock', 'vertex-gemini', 'vertex-claude']) {
  test(`function calls through ${model}: the round trip, streamed too`, async () => {
    const input = [{ role: 'user', content: 'What is the weather in Paris?' }];
    const r = await client.responses.create({ model, input, tools });
    const call = r.output.find((o) => o.type === 'function_call');
    assert.ok(call, JSON.stringify(r.output));
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.arguments), { city: 'Paris' });
    assert.ok(call.call_id.length > 0);

    const stream = client.responses.stream({ model, input, tools });
    let args = '';
    stream.on('response.function_call_arguments.delta', (e) => { args += e.delta; });
    const done = await stream.finalResponse();
    const scall = done.output.find((o) => o.type === 'function_call');
    assert.deepEqual(JSON.parse(scall.arguments), { city: 'Paris' });
    assert.equal(args, scall.arguments);

    // the output goes back as input items: the call and its output
    const answer = await client.responses.create({
      model, tools,
      input: [...input, { type: 'function_call', call_id: call.call_id, name: call.name, arguments: call.arguments },
        { type: 'function_call_output', call_id: call.call_id, output: '{"temp":"18C"}' }],
    });
    assert.match(answer.output_text, /^tool said: .*18C/);
  });
}

for (const [model, upstreamModel] of [['openai-native', 'openai-native'], ['azure-native', 'dep-native']]) {
  test(`${model}: /v1/responses as it came, answered as the backend answers`, async () => {
    // the mock (tests/tools/mockproviders.py) serves the Responses API and refuses chat fields
    const r = await client.responses.create({ model, input: 'one two three', include: [] });
    assert.equal(r.id, 'resp_native');
    assert.equal(r.model, upstreamModel); // Azure: the deployment
    assert.equal(r.output_text, 'native: 3 words');
    assert.equal(r.usage.output_tokens, 3);
    const stream = client.responses.stream({ model, input: 'one two three' });
    const done = await stream.finalResponse();
    assert.equal(done.id, 'resp_native');
    assert.equal(done.output_text, 'native: 3 words ');
  });
}

test('reasoning through Anthropic becomes a reasoning item', async () => {
  const r = await client.responses.create({ model: 'claude', input: 'hi', reasoning: { effort: 'low' } });
  assert.equal(r.output[0].type, 'reasoning');
  assert.deepEqual(r.output[0].summary, [{ type: 'summary_text', text: 'Thinking it over.' }]);
  assert.equal(r.output_text, TEXT);
  assert.equal(r.reasoning.effort, 'low');
  const done = await client.responses.stream({ model: 'claude', input: 'hi', reasoning: { effort: 'low' } }).finalResponse();
  assert.deepEqual(done.output[0].summary, r.output[0].summary);
  assert.equal(done.output_text, TEXT);
});

test('what needs server state is refused with a clear message', async () => {
  await assert.rejects(client.responses.create({ model: 'demo', input: 'hi', store: true }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'store' && /does not keep/.test(e.message));
  await assert.rejects(client.responses.create({ model: 'demo', input: 'hi', previous_response_id: 'resp_1' }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'previous_response_id');
  await assert.rejects(client.responses.create({ model: 'demo', input: 'hi', tools: [{ type: 'web_search' }] }),
    (e) => e instanceof OpenAI.BadRequestError && /web_search/.test(e.message));
  await assert.rejects(client.responses.create({ model: 'nope', input: 'hi' }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found');
});

test('a structured-output request is sent as response_format', async () => {
  const r = await client.responses.create({
    model: 'demo', input: 'hi',
    text: { format: { type: 'json_schema', name: 'answer', schema: { type: 'object', properties: {} }, strict: true } },
  });
  assert.equal(r.status, 'completed');
  assert.equal(r.text.format.type, 'json_schema');
});
