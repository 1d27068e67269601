// The official openai and Anthropic npm clients see knoway's 401, 403 and 429 as their own
// typed errors, with the rate-limit headers they read.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startLimited, stop } from './harness.mjs';

let base;
// the SDKs' error headers: a Headers object (openai 5) or a plain object
const hdr = (e, k) => (typeof e.headers?.get === 'function' ? e.headers.get(k) : e.headers?.[k]);
const chat = { model: 'demo', messages: [{ role: 'user', content: 'hi' }] };
const openai = (apiKey, headers = {}) => new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, defaultHeaders: headers });

before(async () => { base = await startLimited(); });
after(stop);

test('a wrong key is an AuthenticationError (401 invalid_api_key)', async () => {
  await assert.rejects(openai('sk-wrong').chat.completions.create(chat),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === 'invalid_api_key');
  const claude = new Anthropic({ baseURL: base, apiKey: 'sk-wrong', maxRetries: 0 });
  await assert.rejects(claude.messages.create({ model: 'claude-x', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e instanceof Anthropic.AuthenticationError && e.status === 401);
});

test('a model outside the allow-list is a PermissionDeniedError (403)', async () => {
  await assert.rejects(openai('sk-limited-0123456789abcdef').chat.completions.create({ ...chat, model: 'other' }),
    (e) => e instanceof OpenAI.PermissionDeniedError && e.code === 'model_not_allowed');
  const models = await openai('sk-limited-0123456789abcdef').models.list();
  assert.deepEqual(models.data.map((m) => m.id).sort(), ['demo']);
});

test('a rate limit is a RateLimitError (429) with the retry headers', async () => {
  const c = openai('sk-limited-0123456789abcdef', { 'x-bucket': 'sdk' });
  const { data, response } = await c.chat.completions.create(chat).withResponse();
  assert.equal(data.choices[0].message.role, 'assistant');
  assert.equal(response.headers.get('x-ratelimit-limit-requests'), '2');
  assert.equal(response.headers.get('x-ratelimit-remaining-requests'), '1');
  await c.chat.completions.create(chat);
  await assert.rejects(c.chat.completions.create(chat), (e) => {
    assert.ok(e instanceof OpenAI.RateLimitError);
    assert.equal(e.status, 429);
    assert.equal(e.code, 'rate_limit_exceeded');
    assert.ok(Number(hdr(e, 'retry-after')) >= 1);
    assert.equal(hdr(e, 'x-ratelimit-remaining-requests'), '0');
    return true;
  });
  const claude = new Anthropic({ baseURL: base, apiKey: 'sk-limited-0123456789abcdef', maxRetries: 0, defaultHeaders: { 'x-bucket': 'sdk' } });
  await assert.rejects(claude.messages.create({ model: 'claude-x', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] }),
    (e) => e instanceof Anthropic.RateLimitError && e.status === 429 && e.error.error.type === 'rate_limit_error'
      && Number(hdr(e, 'retry-after')) >= 1);
});

test('a budget the request cannot fit is a RateLimitError with code insufficient_quota', async () => {
  const c = openai('sk-payer-0123456789abcdef');
  // its worst case (the input and 1,024 output tokens at 1000 USD per million) is reserved
  // on admission: more than the 0.01 USD budget holds
  await assert.rejects(c.chat.completions.create(chat),
    (e) => e instanceof OpenAI.RateLimitError && e.code === 'insufficient_quota' && e.type === 'insufficient_quota');
});
