// The gateway under test for the client suites: knoway-dataplane in static mode with the
// mock providers (tests/tools) behind it, one route per provider and fault.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const build = process.env.KW_BUILD ?? new URL('../../../build', import.meta.url).pathname;
const procs = [];

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

// Start the mocks and the gateway; its base URL (http://127.0.0.1:PORT).
export async function start() {
  const [mock, listen, admin, mock2] = [await freePort(), await freePort(), await freePort(), await freePort()];
  procs.push(spawn(join(build, 'tests/knoway-mockllm'), ['--listen', `127.0.0.1:${mock}`], { stdio: 'ignore' }));
  const dir = mkdtempSync(join(tmpdir(), 'kw-openai-'));
  // a Google service-account key (Vertex AI): the mock's token endpoint checks its JWTs
  const sa = {
    type: 'service_account', project_id: 'knoway-test', private_key_id: 'key-1',
    private_key: execFileSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048']).toString(),
    client_email: 'knoway@knoway-test.iam.gserviceaccount.com', token_uri: `http://127.0.0.1:${mock2}/token`,
  };
  writeFileSync(join(dir, 'sa.json'), JSON.stringify(sa));
  // Gemini, Bedrock (SigV4 verified by the mock, with a session token) and Vertex AI (Claude
  // served by the Anthropic mock behind it)
  procs.push(spawn('python3', [new URL('../../tools/mockproviders.py', import.meta.url).pathname,
    '--listen', `127.0.0.1:${mock2}`, '--aws-region', 'eu-central-1', '--aws-session-token', 'tok-1',
    '--gcp-service-account', join(dir, 'sa.json'), '--anthropic-upstream', `http://127.0.0.1:${mock}`],
  { stdio: 'ignore' }));
  await waitPort(mock);
  await waitPort(mock2);
  const cfg = join(dir, 'knoway.yaml');
  const vertex = (name, model) => `---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: ${name}}
spec:
  provider: VertexAI
  modelName: "${model}"
  upstream: {baseURL: "http://127.0.0.1:${mock2}"}
  credentials: {secretRef: {name: gcp}, vertex: {project: knoway-test, region: us-east5}}
${route(name, name)}`;
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
  // Bedrock answering a stream with a fault after two events (tests/tools/mockproviders.py),
  // or every request with an error status
  const bedrockFault = (name, fault, header = 'x-mock-fault') => `---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: ${name}}
spec:
  provider: AWSBedrock
  upstream:
    baseURL: "http://127.0.0.1:${mock2}"
    headers: [{name: ${header}, value: "${fault}"}, {name: x-mock-fault-after, value: "2"}]
  credentials: {secretRef: {name: keys}, bedrock: {region: eu-central-1, sessionTokenKey: AWS_SESSION_TOKEN}}
${route(name, name)}`;
  writeFileSync(cfg, `apiVersion: llm.knoway.dev/v1alpha1
kind: DataPlane
metadata: {name: t}
spec: {listen: "127.0.0.1:${listen}", admin: "127.0.0.1:${admin}", workers: 2,
       vertexAI: {tokenURLs: ["http://127.0.0.1:${mock2}/token"]}}
${backend('demo')}${route('demo', 'demo')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: messages-only}
spec:
  match: {models: [messages-only], paths: [/v1/messages]}
  backendRefs: [{name: demo}]
${backend('cut', '    headers: [{name: x-mock-fault, value: reset}, {name: x-mock-fault-after, value: "3"}]\n')}${route('cut', 'cut')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: continued}
spec:
  match: {models: [continued]}
  backendRefs: [{name: cut}, {name: demo, priority: 1}]
  retry: {midStream: Continue}
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
metadata: {name: claude-native}
spec:
  provider: Anthropic
  structuredOutputs: Native
  upstream: {baseURL: "http://127.0.0.1:${mock}"}
  credentials: {secretRef: {name: keys}}
${route('claude-native', 'claude-native')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: bedrock-native}
spec:
  provider: AWSBedrock
  structuredOutputs: Native
  modelName: "anthropic.claude-sonnet-4-5-20250929-v1:0"
  upstream: {baseURL: "http://127.0.0.1:${mock2}"}
  credentials: {secretRef: {name: keys}, bedrock: {region: eu-central-1, sessionTokenKey: AWS_SESSION_TOKEN}}
${route('bedrock-native', 'bedrock-native')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: openai-native}
spec:
  provider: OpenAI
  upstream: {baseURL: "http://127.0.0.1:${mock2}/v1"}
  credentials: {secretRef: {name: keys}}
${route('openai-native', 'openai-native')}---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: azure-native}
spec:
  provider: AzureOpenAI
  upstream: {baseURL: "http://127.0.0.1:${mock2}"}
  credentials: {secretRef: {name: keys}, azure: {deployment: dep-native}}
${route('azure-native', 'azure-native')}${bedrockFault('bedrock-broken', 'exception')}${bedrockFault('bedrock-crc', 'badcrc')}${
  bedrockFault('bedrock-throttled', '429', 'x-mock-status')}---
apiVersion: v1
kind: Secret
metadata: {name: gcp}
stringData:
  credentials.json: ${JSON.stringify(JSON.stringify(sa))}
${vertex('vertex-gemini', 'gemini-2.5-flash')}${vertex('vertex-claude', 'claude-3-5-haiku@20241022')}`);
  procs.push(spawn(join(build, 'dataplane/knoway-dataplane'), ['-c', cfg], { stdio: 'ignore' }));
  await waitPort(listen);
  await waitVertexToken(admin);
  return `http://127.0.0.1:${listen}`;
}

// The Vertex AI access token is fetched when the configuration is applied; requests before
// it arrives are answered 503 (tests/integration/test_vertex.py covers that).
async function waitVertexToken(admin) {
  for (let i = 0; i < 500; i++) {
    const r = await fetch(`http://127.0.0.1:${admin}/metrics`).then((x) => x.text()).catch(() => '');
    if (/^knoway_gcp_tokens [1-9]/m.test(r)) return;
    await new Promise((res) => setTimeout(res, 20));
  }
  throw new Error('no Vertex AI access token');
}

// A gateway with identity and limits: one consumer (key sk-limited-0123456789abcdef) allowed the model
// "demo" only, 2 requests per hour, a budget that one request spends. Its base URL.
export async function startLimited() {
  const [mock, listen, admin] = [await freePort(), await freePort(), await freePort()];
  procs.push(spawn(join(build, 'tests/knoway-mockllm'), ['--listen', `127.0.0.1:${mock}`], { stdio: 'ignore' }));
  await waitPort(mock);
  const dir = mkdtempSync(join(tmpdir(), 'kw-limits-'));
  const cfg = join(dir, 'knoway.yaml');
  writeFileSync(cfg, `apiVersion: llm.knoway.dev/v1alpha1
kind: DataPlane
metadata: {name: t}
spec: {listen: "127.0.0.1:${listen}", admin: "127.0.0.1:${admin}", workers: 1, auth: {required: true}}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: demo}
spec:
  provider: vLLM
  upstream: {baseURL: "http://127.0.0.1:${mock}/v1"}
  pricing: {inputPerMillion: "1000", outputPerMillion: "1000"}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: demo}
spec:
  match: {models: [demo, other, "claude-*"]}
  backendRefs: [{name: demo}]
  rateLimits: [{name: two-an-hour, key: Header/x-bucket, requests: {limit: 2, window: 1h}}]
---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {k: sk-limited-0123456789abcdef, p: sk-payer-0123456789abcdef}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMConsumer
metadata: {name: limited}
spec:
  apiKeys: [{secretRef: {name: keys, key: k}}]
  models: [demo, "claude-*"]
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMConsumer
metadata: {name: payer}
spec:
  apiKeys: [{secretRef: {name: keys, key: p}}]
  budget: {limit: "0.01", period: Month}
`);
  procs.push(spawn(join(build, 'dataplane/knoway-dataplane'), ['-c', cfg], { stdio: 'ignore' }));
  await waitPort(listen);
  return `http://127.0.0.1:${listen}`;
}

export function stop() {
  procs.forEach((p) => p.kill('SIGTERM'));
}

