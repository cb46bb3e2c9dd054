// An MCP client that signs in with OAuth the way hosted connectors and desktop hosts do: the official
// TypeScript SDK's OAuthClientProvider on its Streamable HTTP transport (401 -> protected resource metadata ->
// authorization server metadata -> dynamic client registration -> PKCE authorization code flow -> token).
// The browser step is the test's: this prints the authorization URL ({"event": "authorize"}) and waits on its
// loopback redirect URI for the code, as a desktop client does. Every HTTP exchange is printed as
// {"event": "http"} so the test can check the order of the flow. Usage: node client.mjs URL TOOL ARGS_JSON
import http from 'node:http';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';

const [serverUrl, tool, argsJson] = process.argv.slice(2);
const say = (event, data = {}) => process.stdout.write(JSON.stringify({ event, ...data }) + '\n');

let resolveCode, rejectCode;
const codeArrived = new Promise((resolve, reject) => { resolveCode = resolve; rejectCode = reject; });
const callback = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  const code = url.searchParams.get('code');
  res.writeHead(code ? 200 : 400, { 'Content-Type': 'text/html' });
  res.end(code ? '<p id="done">Signed in: you may close this window.</p>' : '<p id="error">refused</p>');
  if (code) resolveCode(code); else rejectCode(new Error(url.searchParams.get('error') || 'no code'));
});
await new Promise((resolve) => callback.listen(0, '127.0.0.1', resolve));
const redirectUrl = `http://127.0.0.1:${callback.address().port}/callback`;

const saved = {};
const provider = {
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return { client_name: 'mcp-broker oauth test', redirect_uris: [redirectUrl], grant_types: ['authorization_code'],
             response_types: ['code'], token_endpoint_auth_method: 'none' };
  },
  clientInformation: () => saved.client,
  saveClientInformation: (info) => { saved.client = info; say('registered', { client_id: info.client_id }); },
  tokens: () => saved.tokens,
  saveTokens: (tokens) => { saved.tokens = tokens; say('token', { scope: tokens.scope }); },
  redirectToAuthorization: (url) => say('authorize', { url: url.href }),
  saveCodeVerifier: (verifier) => { saved.verifier = verifier; },
  codeVerifier: () => saved.verifier,
};

const loggingFetch = async (input, init) => {
  const response = await fetch(input, init);
  const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
  say('http', { method: init?.method || 'GET', url: url.href, status: response.status,
                www_authenticate: response.headers.get('www-authenticate') });
  return response;
};

const transportFor = () => new StreamableHTTPClientTransport(new URL(serverUrl),
  { authProvider: provider, fetch: loggingFetch });

async function connect() {
  const client = new Client({ name: 'oauth-test', version: '1.0.0' });
  await client.connect(transportFor());
  return client;
}

let client;
try {
  client = await connect();
} catch (err) {
  if (!(err instanceof UnauthorizedError)) throw err;
  const code = await codeArrived;
  await transportFor().finishAuth(code);
  say('authorized');
  client = await connect();
}
const tools = await client.listTools();
say('tools', { names: tools.tools.map((t) => t.name) });
try {
  const result = await client.callTool({ name: tool, arguments: JSON.parse(argsJson) });
  say('result', { result });
} catch (err) {
  say('call_error', { code: err.code, message: String(err.message) });
}
await client.close();
callback.close();
process.exit(0);
