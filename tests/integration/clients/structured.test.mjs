// Structured outputs through every provider, read by the official openai npm client's own
// helpers: zodResponseFormat with chat.completions.parse (and .stream), zodTextFormat with
// responses.parse. The mock models answer with an instance of the schema they were sent
// (tests/tools: constrained decoding), so a parse that succeeds shows the schema itself
// reached the provider in its own form (Anthropic and Bedrock: a forced tool; Gemini:
// responseJsonSchema), and came back as the message's text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { zodResponseFormat, zodTextFormat } from 'openai/helpers/zod';
import { z } from 'zod';
import { start, stop } from './harness.mjs';

let client;

before(async () => {
  client = new OpenAI({ baseURL: `${await start()}/v1`, apiKey: 'not-needed', maxRetries: 0 });
});

after(stop);

const Weather = z.object({
  city: z.string(),
  temperature: z.number(),
  conditions: z.enum(['sunny', 'rainy']),
  days: z.array(z.object({ day: z.number().int(), note: z.string().nullable() })),
});
// what a model under the schema answers in the mocks (the first enum value, 7 for integers...)
const EXPECTED = { city: 'tok0', temperature: 1.5, conditions: 'sunny', days: [{ day: 7, note: 'tok0' }] };
const messages = [{ role: 'user', content: 'Weather in Paris?' }];

const CHAT = ['demo', 'azure', 'claude', 'gemini', 'bedrock', 'vertex-gemini', 'vertex-claude',
  'claude-native', 'bedrock-native']; // the last two: the providers' own structured outputs

for (const model of CHAT) {
  test(`chat.completions.parse with zodResponseFormat through ${model}`, async () => {
    const r = await client.chat.completions.parse({
      model, messages, response_format: zodResponseFormat(Weather, 'weather'),
    });
    const m = r.choices[0].message;
    assert.deepEqual(m.parsed, EXPECTED);
    assert.equal(r.choices[0].finish_reason, 'stop');
    assert.deepEqual(m.tool_calls ?? [], []); // the answer tool is not a call the client sees
  });

  test(`chat.completions.stream with zodResponseFormat through ${model}`, async () => {
    const stream = client.chat.completions.stream({
      model, messages, response_format: zodResponseFormat(Weather, 'weather'),
      stream_options: { include_usage: true },
    });
    let deltas = '';
    stream.on('content.delta', (e) => { deltas += e.delta; });
    const done = await stream.finalChatCompletion();
    assert.deepEqual(done.choices[0].message.parsed, EXPECTED);
    assert.deepEqual(JSON.parse(deltas), EXPECTED); // streamed as content, piece by piece
    assert.equal(done.choices[0].finish_reason, 'stop');
    assert.ok(done.usage.completion_tokens > 0);
  });

  test(`json_object through ${model}`, async () => {
    const r = await client.chat.completions.create({
      model, messages, response_format: { type: 'json_object' },
    });
    const v = JSON.parse(r.choices[0].message.content);
    assert.equal(typeof v, 'object');
  });
}

for (const model of ['demo', 'openai-native', 'claude', 'gemini', 'bedrock', 'vertex-gemini', 'vertex-claude']) {
  test(`responses.parse with zodTextFormat through ${model}`, async () => {
    const r = await client.responses.parse({
      model, input: 'Weather in Paris?', text: { format: zodTextFormat(Weather, 'weather') },
    });
    assert.deepEqual(r.output_parsed, EXPECTED);
    assert.equal(r.status, 'completed');
  });
}

test('a client tool and a structured answer: both declared, the answer tool forced with any', async () => {
  const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
  const r = await client.chat.completions.create({
    model: 'claude', messages, tools, response_format: zodResponseFormat(Weather, 'weather'),
  });
  // the mock calls the first tool declared when any tool may be chosen: the client's own
  assert.equal(r.choices[0].message.tool_calls[0].function.name, 'get_weather');
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
});

test('reasoning and the native structured outputs go together', async () => {
  const r = await client.chat.completions.parse({
    model: 'claude-native', messages, reasoning_effort: 'low', response_format: zodResponseFormat(Weather, 'weather'),
  });
  assert.deepEqual(r.choices[0].message.parsed, EXPECTED);
});

test('reasoning with a forced answer tool is refused with a clear 400', async () => {
  await assert.rejects(
    client.chat.completions.create({
      model: 'claude', messages, reasoning_effort: 'low', response_format: zodResponseFormat(Weather, 'weather'),
    }),
    (e) => e.status === 400 && /cannot be combined with reasoning/.test(e.message),
  );
});

test('a bad response_format is a 400 naming the field', async () => {
  for (const model of ['claude', 'gemini', 'bedrock']) {
    await assert.rejects(
      client.chat.completions.create({ model, messages, response_format: { type: 'xml' } }),
      (e) => e.status === 400 && e.param === 'response_format.type',
    );
    await assert.rejects(
      client.chat.completions.create({
        model, messages, response_format: { type: 'json_schema', json_schema: { name: 'bad name!', schema: {} } },
      }),
      (e) => e.status === 400 && e.param === 'response_format.json_schema.name',
    );
  }
});
